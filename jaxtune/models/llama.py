"""Llama (LlamaForCausalLM): GQA, RoPE (default / linear / llama3), gated SiLU MLP."""

from jaxtune.models.config import RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "llama"
MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"


def from_hf(h) -> dict:
  bias = bool(getattr(h, "attention_bias", False))
  return dict(common_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters), hidden_act=activation_from_hf(h.hidden_act),
              qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(h, "mlp_bias", False)))


def to_hf(c) -> dict:
  return dict(rope_parameters=c.rope.to_hf(), hidden_act=activation_to_hf(c.hidden_act),
              attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
