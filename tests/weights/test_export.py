"""Streaming export: transformers reloads it with the same logits and tensor names."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from safetensors import safe_open

from jaxtune.models import ModelConfig, RopeConfig, build_model
from jaxtune.weights import load_pretrained, save_pretrained, save_state_pretrained
from tests.helpers.hf_models import FAMILIES, cached_tiny_hf, hf_logits, rel_err

CASES = [("llama", dict(tie=True))] + [(f, {}) for f in FAMILIES]
IDS = ["llama-tied"] + list(FAMILIES)


def tensor_names(d):
  index = d / "model.safetensors.index.json"
  if index.exists():
    return set(json.loads(index.read_text())["weight_map"])
  with safe_open(d / "model.safetensors", framework="numpy") as f:
    return set(f.keys())


def reload_hf(d):
  return transformers.AutoModelForCausalLM.from_pretrained(d, dtype="float32").eval()


@pytest.mark.parametrize("family,kw", CASES, ids=IDS)
def test_roundtrip_through_transformers(family, kw, tmp_path):
  src, hf = cached_tiny_hf(family, **kw)
  model = load_pretrained(src)
  out = save_pretrained(model, tmp_path / "out", source_dir=src, max_shard_bytes=30_000)
  assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("model-*.safetensors"))) > 1
  assert tensor_names(out) == tensor_names(src)
  assert ("lm_head.weight" in tensor_names(out)) == (not model.config.tie_word_embeddings)
  ids = np.random.RandomState(5).randint(0, model.config.vocab_size, (2, 40))
  assert rel_err(hf_logits(reload_hf(out), ids), hf_logits(hf, ids)) <= 1e-5
  src_cfg, out_cfg = (json.loads((d / "config.json").read_text()) for d in (src, out))
  assert out_cfg.pop("dtype") == "float32"
  src_cfg.pop("dtype", None)
  assert out_cfg == src_cfg  # every source field kept (architectures, rope_parameters, token ids, ...)
  assert (out / "generation_config.json").read_text() == (src / "generation_config.json").read_text()


def test_from_scratch_export_loads_in_transformers(tmp_path):
  cfg = ModelConfig.for_family("gemma3", vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2,
                               num_heads=2, num_kv_heads=1, head_dim=16, sliding_window=4,
                               layer_types=("sliding_attention", "full_attention"), query_pre_attn_scalar=16.0,
                               rope_local=RopeConfig(theta=100.0), bos_token_id=1, eos_token_id=(2, 3))
  model = build_model(cfg, rngs=nnx.Rngs(3))
  assert model.hf_config is None
  out = save_pretrained(model, tmp_path / "scratch")
  assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
  assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": [2, 3]}
  assert ModelConfig.from_hf(json.loads((out / "config.json").read_text())) == cfg
  ids = np.random.RandomState(6).randint(0, 96, (1, 12))
  assert rel_err(hf_logits(reload_hf(out), ids), model(jnp.asarray(ids, jnp.int32))) <= 1e-4


def test_bfloat16_export_and_state_export(tmp_path):
  src, _ = cached_tiny_hf("qwen2")
  model = load_pretrained(src)
  state = nnx.state(model, nnx.Param)
  out = save_state_pretrained(model.config, model.hf_config, nnx.to_pure_dict(state), tmp_path / "bf16",
                              dtype=jnp.bfloat16)
  assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
  with safe_open(out / "model.safetensors", framework="numpy") as f:
    assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
  back = load_pretrained(out)
  want = np.asarray(model.model.layers[2].self_attn.k_proj.bias[...].astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(back.model.layers[2].self_attn.k_proj.bias[...]), want)
  # a re-export into the same dir replaces the old files
  save_state_pretrained(model.config, model.hf_config, state, out, max_shard_bytes=30_000)
  assert not (out / "model.safetensors").exists() and (out / "model.safetensors.index.json").exists()
  assert tensor_names(out) == tensor_names(src)


def test_incomplete_state_is_refused(tmp_path):
  src, _ = cached_tiny_hf("llama", tie=False)
  model = load_pretrained(src)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  del params["lm_head"]
  with pytest.raises(ValueError, match=r"missing \['lm_head\.kernel'\]"):
    save_state_pretrained(model.config, model.hf_config, params, tmp_path / "x")
