"""Llama (LlamaForCausalLM): GQA, RoPE (default / linear / llama3), gated SiLU MLP."""

from jaxtune.models.hf_config import RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "llama"
MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(qk_norm=False, norm_plus_one=False, sandwich_norm=False, scale_embeddings=False,
             query_pre_attn_scalar=None, attn_logit_softcap=None, final_logit_softcap=None, rope_local=None)


def llama_like_from_hf(h) -> dict:
  """Fields of the Llama-layout families (Llama, Mistral, Qwen2, Qwen3)."""
  return dict(common_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters),
              hidden_act=activation_from_hf(h.hidden_act))


def llama_like_to_hf(c) -> dict:
  return dict(rope_parameters=c.rope.to_hf(), hidden_act=activation_to_hf(c.hidden_act))


def from_hf(h) -> dict:
  bias = bool(getattr(h, "attention_bias", False))
  return dict(llama_like_from_hf(h), qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(h, "mlp_bias", False)))


def check(c) -> list[str]:
  errors = [] if c.qkv_bias == c.o_bias else ["attention_bias covers q, k, v and o alike: qkv_bias must equal o_bias"]
  if "sliding_attention" in c.layer_types:
    errors.append("Llama has no sliding-window layers")
  return errors


def to_hf(c) -> dict:
  return dict(llama_like_to_hf(c), attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
