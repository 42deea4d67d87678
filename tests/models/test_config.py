"""ModelConfig <-> HF config.json."""

import dataclasses

import pytest
import transformers

from jaxtune.models import FAMILIES as REGISTRY, ModelConfig, RopeConfig
from tests.helpers.hf_models import FAMILIES, LLAMA3_ROPE, hf_config


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_to_hf_roundtrip(family):
  cfg = ModelConfig.from_hf(hf_config(family).to_dict())
  assert cfg.family == family
  hf = cfg.to_hf()
  again = transformers.AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})
  assert type(again).__name__ == type(hf_config(family)).__name__
  assert ModelConfig.from_hf(again.to_dict()) == cfg
  assert ModelConfig.from_hf(hf) == cfg


def test_family_flags():
  g2 = ModelConfig.from_hf(hf_config("gemma2").to_dict())
  assert (g2.norm_plus_one, g2.sandwich_norm, g2.scale_embeddings, g2.qk_norm) == (True, True, True, False)
  assert (g2.attn_logit_softcap, g2.final_logit_softcap, g2.query_pre_attn_scalar) == (2.0, 3.0, 24.0)
  assert g2.layer_types == ("sliding_attention", "full_attention", "sliding_attention") and g2.hidden_act == "gelu_tanh"
  g3 = ModelConfig.from_hf(hf_config("gemma3").to_dict())
  assert g3.qk_norm and g3.rope == RopeConfig("linear", 10000.0, factor=4.0)
  assert g3.rope_local == RopeConfig(theta=100.0)
  assert g3.rope_for(0).theta == 100.0 and g3.rope_for(1).theta == 10000.0 and g3.window(1) is None
  # transformers' Gemma 3 attention ignores attn_logit_softcapping; so do we
  assert ModelConfig.from_hf(hf_config("gemma3", attn_logit_softcapping=5.0).to_dict()).attn_logit_softcap is None
  with pytest.raises(ValueError, match="gemma3 needs attn_logit_softcap=None"):
    dataclasses.replace(g3, attn_logit_softcap=5.0)
  q2 = ModelConfig.from_hf(hf_config("qwen2").to_dict())
  assert q2.qkv_bias and not q2.o_bias and q2.layer_types[0] == "full_attention" and q2.window(1) == 8
  q3 = ModelConfig.from_hf(hf_config("qwen3").to_dict())
  assert q3.qk_norm and q3.qkv_bias and q3.o_bias and q3.head_dim == 16
  m = ModelConfig.from_hf(hf_config("mistral").to_dict())
  assert set(m.layer_types) == {"sliding_attention"} and m.sliding_window == 8
  l3 = ModelConfig.from_hf(hf_config("llama", rope_parameters=LLAMA3_ROPE).to_dict())
  assert l3.rope == RopeConfig("llama3", 10000.0, 8.0, 1.0, 4.0, 64)


def test_old_style_rope_keys():
  d = hf_config("llama").to_dict()
  d.pop("rope_parameters")
  d.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
  assert ModelConfig.from_hf(d).rope == RopeConfig("llama3", 500000.0, 32.0, 1.0, 4.0, 64)


def test_unsupported_architecture_lists_supported():
  with pytest.raises(ValueError, match="unsupported architecture") as e:
    ModelConfig.from_hf({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3"})
  for m in REGISTRY.values():
    assert m.ARCHITECTURE in str(e.value)
  with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
    ModelConfig.from_hf(dict(hf_config("qwen2").to_dict(), rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                             "rope_theta": 1e6}))


@pytest.mark.parametrize("bad,match", [
    (dict(num_heads=4, num_kv_heads=3), "not divisible by num_kv_heads"),
    (dict(layer_types=("full_attention",)), "layer_types has 1 entries for 2 layers"),
    (dict(layer_types=("sliding_attention", "full_attention")), "need sliding_window"),
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(family="gpt2"), "family 'gpt2'"),
    (dict(head_dim=15), "head_dim must be even"),
    (dict(qk_norm=True), "llama needs qk_norm=False"),
    (dict(family="qwen2"), "qwen2 needs qkv_bias=True"),
    (dict(layer_types=("sliding_attention", "full_attention"), sliding_window=4), "Llama has no sliding"),
    (dict(family="mistral", layer_types=("sliding_attention", "full_attention"), sliding_window=4), "one attention"),
])
def test_validation(bad, match):
  base = dict(vocab_size=32, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2)
  with pytest.raises(ValueError, match=match):
    ModelConfig(**{**base, **bad})


def test_for_family_fills_the_fixed_flags():
  cfg = ModelConfig.for_family("gemma2", vocab_size=32, hidden_size=64, intermediate_size=96, num_layers=2,
                               num_heads=4, num_kv_heads=2, layer_types=("sliding_attention", "full_attention"),
                               sliding_window=4)
  assert cfg.norm_plus_one and cfg.sandwich_norm and cfg.scale_embeddings and cfg.tie_word_embeddings
  assert cfg.hidden_act == "gelu_tanh" and ModelConfig.from_hf(cfg.to_hf()) == dataclasses.replace(
      cfg, query_pre_attn_scalar=16.0)  # transformers always names the scale; head_dim is the default


def test_frozen_and_derived():
  cfg = ModelConfig(vocab_size=32, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2)
  assert cfg.head_dim == 16 and cfg.layer_types == ("full_attention",) * 2 and cfg.attn_scale == 16 ** -0.5
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.hidden_size = 1
  hash(cfg)
