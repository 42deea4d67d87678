"""Mistral (MistralForCausalLM): Llama layout, every layer sliding when `sliding_window` is set."""

from jaxtune.models.hf_config import FULL, SLIDING
from jaxtune.models.llama import FLAGS as LLAMA_FLAGS, llama_like_from_hf, llama_like_to_hf

NAME = "mistral"
MODEL_TYPE = "mistral"
ARCHITECTURE = "MistralForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(LLAMA_FLAGS, qkv_bias=False, o_bias=False, mlp_bias=False)


def from_hf(h) -> dict:
  window = h.sliding_window
  return dict(llama_like_from_hf(h), sliding_window=window,
              layer_types=((SLIDING if window else FULL),) * h.num_hidden_layers)


def check(c) -> list[str]:
  return ["Mistral has one attention type for all layers"] if len(set(c.layer_types)) > 1 else []


def to_hf(c) -> dict:
  return dict(llama_like_to_hf(c), sliding_window=c.sliding_window if c.is_sliding(0) else None)
