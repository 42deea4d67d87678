"""HF config.json fields every family shares: RoPE parameters, the common sizes, activation names.

The family modules (`llama.py`, `gemma2.py`, ...) build their `from_hf`/`to_hf` field
maps from these; `ModelConfig` (config.py) holds the result.
"""

from __future__ import annotations

import dataclasses
from typing import Any

FULL = "full_attention"
SLIDING = "sliding_attention"
ROPE_TYPES = ("default", "linear", "llama3")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """RoPE in HF's rotate-half layout; `rope_type` as in HF `rope_parameters`."""
  rope_type: str = "default"
  theta: float = 10000.0
  factor: float = 1.0  # linear, llama3
  low_freq_factor: float = 1.0  # llama3
  high_freq_factor: float = 4.0  # llama3
  original_max_position_embeddings: int = 8192  # llama3

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type {self.rope_type!r} is not supported; supported: {ROPE_TYPES}")
    if self.theta <= 0 or self.factor <= 0:
      raise ValueError(f"rope theta and factor must be > 0, got {self}")

  @classmethod
  def from_hf(cls, p: dict[str, Any]) -> "RopeConfig":
    p = dict(p or {})
    rope_type = p.get("rope_type", p.get("type", "default"))
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {ROPE_TYPES}")
    if p.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError(f"partial_rotary_factor={p['partial_rotary_factor']} is not supported")
    kw: dict[str, Any] = {"rope_type": rope_type, "theta": float(p.get("rope_theta", 10000.0))}
    if rope_type in ("linear", "llama3"):
      kw["factor"] = float(p["factor"])
    if rope_type == "llama3":
      kw.update(low_freq_factor=float(p["low_freq_factor"]), high_freq_factor=float(p["high_freq_factor"]),
                original_max_position_embeddings=int(p["original_max_position_embeddings"]))
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.theta}
    if self.rope_type in ("linear", "llama3"):
      out["factor"] = self.factor
    if self.rope_type == "llama3":
      out.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                 original_max_position_embeddings=self.original_max_position_embeddings)
    return out


def common_from_hf(h: Any) -> dict[str, Any]:
  """Fields every family shares, from a normalised transformers config object."""
  eos = getattr(h, "eos_token_id", None)
  return dict(
      vocab_size=h.vocab_size, hidden_size=h.hidden_size, intermediate_size=h.intermediate_size,
      num_layers=h.num_hidden_layers, num_heads=h.num_attention_heads,
      num_kv_heads=h.num_key_value_heads or h.num_attention_heads,
      head_dim=getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads,
      rms_norm_eps=float(h.rms_norm_eps), tie_word_embeddings=bool(h.tie_word_embeddings),
      max_position_embeddings=int(h.max_position_embeddings),
      bos_token_id=getattr(h, "bos_token_id", None), pad_token_id=getattr(h, "pad_token_id", None),
      eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else eos,
  )


def common_to_hf(c: Any) -> dict[str, Any]:
  eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
  return dict(
      vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=c.tie_word_embeddings,
      max_position_embeddings=c.max_position_embeddings,
      bos_token_id=c.bos_token_id, eos_token_id=eos, pad_token_id=c.pad_token_id,
  )


def activation_from_hf(name: str) -> str:
  table = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
           "gelu_tanh": "gelu_tanh", "gelu": "gelu"}
  if name not in table:
    raise ValueError(f"activation {name!r} is not supported; supported: {sorted(table)}")
  return table[name]


def activation_to_hf(name: str) -> str:
  return {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[name]
