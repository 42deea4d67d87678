"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama layout with q/k/v biases; optional sliding layers."""

from jaxtune.models.hf_config import SLIDING
from jaxtune.models.llama import FLAGS as LLAMA_FLAGS, llama_like_from_hf, llama_like_to_hf

NAME = "qwen2"
MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(LLAMA_FLAGS, qkv_bias=True, o_bias=False, mlp_bias=False)


def sliding_to_hf(c) -> dict:
  """Qwen's switch: sliding layers exist only with use_sliding_window=True."""
  sliding = SLIDING in c.layer_types
  return dict(use_sliding_window=sliding, sliding_window=c.sliding_window if sliding else None,
              layer_types=list(c.layer_types))


def from_hf(h) -> dict:
  return dict(llama_like_from_hf(h), qkv_bias=True, sliding_window=h.sliding_window, layer_types=tuple(h.layer_types))


def to_hf(c) -> dict:
  return dict(llama_like_to_hf(c), **sliding_to_hf(c))
