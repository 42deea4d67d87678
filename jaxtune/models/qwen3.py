"""Qwen3 (Qwen3ForCausalLM): Llama layout with per-head q/k RMSNorm (over head_dim)."""

from jaxtune.models.llama import FLAGS as LLAMA_FLAGS, llama_like_from_hf, llama_like_to_hf
from jaxtune.models.qwen2 import sliding_to_hf

NAME = "qwen3"
MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(LLAMA_FLAGS, qk_norm=True, mlp_bias=False)


def from_hf(h) -> dict:
  bias = bool(getattr(h, "attention_bias", False))
  return dict(llama_like_from_hf(h), qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=h.sliding_window,
              layer_types=tuple(h.layer_types))


def check(c) -> list[str]:
  return [] if c.qkv_bias == c.o_bias else ["attention_bias covers q, k, v and o alike: qkv_bias must equal o_bias"]


def to_hf(c) -> dict:
  return dict(llama_like_to_hf(c), attention_bias=c.qkv_bias, **sliding_to_hf(c))
