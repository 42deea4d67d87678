"""Mistral (MistralForCausalLM): Llama layout, every layer sliding when `sliding_window` is set."""

from jaxtune.models.config import FULL, SLIDING, RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "mistral"
MODEL_TYPE = "mistral"
ARCHITECTURE = "MistralForCausalLM"


def from_hf(h) -> dict:
  window = h.sliding_window
  return dict(common_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters), hidden_act=activation_from_hf(h.hidden_act),
              sliding_window=window, layer_types=((SLIDING if window else FULL),) * h.num_hidden_layers)


def to_hf(c) -> dict:
  if len(set(c.layer_types)) > 1:
    raise ValueError("Mistral has one attention type for all layers; use qwen2/gemma for mixed layer_types")
  return dict(rope_parameters=c.rope.to_hf(), hidden_act=activation_to_hf(c.hidden_act),
              sliding_window=c.sliding_window if c.is_sliding(0) else None)
