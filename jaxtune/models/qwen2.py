"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama layout with q/k/v biases; optional sliding layers."""

from jaxtune.models.config import SLIDING, RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "qwen2"
MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"


def from_hf(h) -> dict:
  return dict(common_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters), hidden_act=activation_from_hf(h.hidden_act),
              qkv_bias=True, sliding_window=h.sliding_window, layer_types=tuple(h.layer_types))


def to_hf(c) -> dict:
  sliding = SLIDING in c.layer_types
  return dict(rope_parameters=c.rope.to_hf(), hidden_act=activation_to_hf(c.hidden_act), use_sliding_window=sliding,
              sliding_window=c.sliding_window if sliding else None, layer_types=list(c.layer_types))
