"""Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text): Gemma 2 layout plus
q/k RMSNorm and a separate RoPE (base, scaling) for sliding and full layers.
transformers' Gemma 3 attention never applies `attn_logit_softcapping`, so
neither do we (the field is read as None)."""

from jaxtune.models.hf_config import FULL, SLIDING, RopeConfig
from jaxtune.models.gemma2 import gemma_from_hf, gemma_to_hf

NAME = "gemma3"
MODEL_TYPE = "gemma3_text"
ARCHITECTURE = "Gemma3ForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(qk_norm=True, norm_plus_one=True, sandwich_norm=True, scale_embeddings=True, mlp_bias=False,
             attn_logit_softcap=None)
DEFAULTS = dict(hidden_act="gelu_tanh", tie_word_embeddings=True)


def from_hf(h) -> dict:
  rp = h.rope_parameters
  return dict(gemma_from_hf(h), qk_norm=True, attn_logit_softcap=None, rope=RopeConfig.from_hf(rp[FULL]),
              rope_local=RopeConfig.from_hf(rp[SLIDING]))


def to_hf(c) -> dict:
  local = c.rope_local or c.rope
  return dict(gemma_to_hf(c), rope_parameters={FULL: c.rope.to_hf(), SLIDING: local.to_hf()})
