"""Gemma 2 (Gemma2ForCausalLM): (1+w) RMSNorm, sandwich norms, scaled embeddings,
attention-logit and final-logit softcapping, alternating sliding/global layers."""

from jaxtune.models.hf_config import RopeConfig, activation_from_hf, activation_to_hf, common_from_hf

NAME = "gemma2"
MODEL_TYPE = "gemma2"
ARCHITECTURE = "Gemma2ForCausalLM"
# Flags this family fixes (checked by ModelConfig, filled by ModelConfig.for_family).
FLAGS = dict(qk_norm=False, norm_plus_one=True, sandwich_norm=True, scale_embeddings=True, mlp_bias=False,
             rope_local=None)
DEFAULTS = dict(hidden_act="gelu_tanh", tie_word_embeddings=True)


def gemma_from_hf(h) -> dict:
  """Fields Gemma 2 and Gemma 3 share."""
  if getattr(h, "use_bidirectional_attention", False):
    raise ValueError("use_bidirectional_attention=True is not supported (causal LMs only)")
  bias = bool(getattr(h, "attention_bias", False))
  return dict(common_from_hf(h), hidden_act=activation_from_hf(h.hidden_activation), qkv_bias=bias, o_bias=bias,
              norm_plus_one=True, sandwich_norm=True, scale_embeddings=True,
              query_pre_attn_scalar=float(h.query_pre_attn_scalar), sliding_window=h.sliding_window,
              layer_types=tuple(h.layer_types), attn_logit_softcap=h.attn_logit_softcapping,
              final_logit_softcap=h.final_logit_softcapping)


def gemma_to_hf(c) -> dict:
  scalar = c.query_pre_attn_scalar or c.head_dim  # transformers wants an int here
  scalar = int(scalar) if float(scalar).is_integer() else scalar
  return dict(hidden_activation=activation_to_hf(c.hidden_act), attention_bias=c.qkv_bias,
              query_pre_attn_scalar=scalar, sliding_window=c.sliding_window,
              layer_types=list(c.layer_types), attn_logit_softcapping=c.attn_logit_softcap,
              final_logit_softcapping=c.final_logit_softcap)


def from_hf(h) -> dict:
  return dict(gemma_from_hf(h), rope=RopeConfig.from_hf(h.rope_parameters))


def to_hf(c) -> dict:
  return dict(gemma_to_hf(c), rope_parameters=c.rope.to_hf())
