"""Qwen3 (Qwen3ForCausalLM): Llama layout with per-head q/k RMSNorm (over head_dim)."""

from jaxtune.models.config import SLIDING, RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "qwen3"
MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"


def from_hf(h) -> dict:
  bias = bool(getattr(h, "attention_bias", False))
  return dict(common_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters), hidden_act=activation_from_hf(h.hidden_act),
              qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=h.sliding_window,
              layer_types=tuple(h.layer_types))


def to_hf(c) -> dict:
  sliding = SLIDING in c.layer_types
  return dict(rope_parameters=c.rope.to_hf(), hidden_act=activation_to_hf(c.hidden_act), attention_bias=c.qkv_bias,
              use_sliding_window=sliding, sliding_window=c.sliding_window if sliding else None,
              layer_types=list(c.layer_types))
