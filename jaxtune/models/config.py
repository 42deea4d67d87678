"""ModelConfig: one frozen dataclass for every supported decoder family.

Family differences are flags (biases, q/k norm, Gemma norms, softcaps, sliding
layers) read by one shared decoder. `from_hf`/`to_hf` convert to and from an HF
`config.json` dict; the per-family files (`llama.py`, `gemma2.py`, ...) hold the
field mapping and `registry.py` picks the family.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxtune.models import registry
from jaxtune.models.hf_config import (  # noqa: F401 - re-exported: ModelConfig's field types and constants
    ACTIVATIONS, FULL, ROPE_TYPES, SLIDING, RopeConfig, activation_from_hf, activation_to_hf, common_from_hf,
    common_to_hf)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only causal LM (all supported families)."""
  family: str = "llama"  # a key of models.registry.FAMILIES
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 32
  head_dim: int | None = None  # None: hidden_size // num_heads
  rms_norm_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()  # full-attention layers (all layers unless rope_local)
  rope_local: RopeConfig | None = None  # sliding layers, when they use their own RoPE (Gemma 3)
  layer_types: tuple[str, ...] | None = None  # None: all "full_attention"
  sliding_window: int | None = None  # tokens a sliding layer sees, itself included
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 8192
  hidden_act: str = "silu"  # silu | gelu_tanh | gelu
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3, Gemma 3)
  norm_plus_one: bool = False  # Gemma RMSNorm: x * (1 + w), w zero-initialised
  sandwich_norm: bool = False  # Gemma 2/3: post-attention, pre/post-feedforward norms
  scale_embeddings: bool = False  # Gemma: embeddings * sqrt(hidden_size)
  query_pre_attn_scalar: float | None = None  # attention scale = this**-0.5 (default head_dim)
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.head_dim is None:
      object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
    if self.layer_types is None:
      object.__setattr__(self, "layer_types", (FULL,) * self.num_layers)
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if self.rope_local == self.rope:  # one canonical form: None means "same as rope"
      object.__setattr__(self, "rope_local", None)
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    FAMILIES = registry.FAMILIES
    errors = []
    if self.family not in FAMILIES:
      errors.append(f"family {self.family!r} not in {sorted(FAMILIES)}")
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
    for name in sizes:
      if getattr(self, name) < 1:
        errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads:
      errors.append(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      errors.append(f"head_dim must be even for RoPE, got {self.head_dim}")
    if len(self.layer_types) != self.num_layers:
      errors.append(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
    if bad := sorted(set(self.layer_types) - {FULL, SLIDING}):
      errors.append(f"unknown layer types {bad}; known: {(FULL, SLIDING)}")
    if SLIDING in self.layer_types and not (self.sliding_window and self.sliding_window >= 1):
      errors.append("sliding_attention layers need sliding_window >= 1")
    if self.hidden_act not in ACTIVATIONS:
      errors.append(f"hidden_act {self.hidden_act!r} not in {ACTIVATIONS}")
    if self.rms_norm_eps <= 0:
      errors.append(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}")
    for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
      if getattr(self, name) is not None and getattr(self, name) <= 0:
        errors.append(f"{name} must be > 0 or None, got {getattr(self, name)}")
    if self.family in FAMILIES:
      fam = FAMILIES[self.family]
      errors += [f"{self.family} needs {k}={v!r}, got {getattr(self, k)!r}" for k, v in fam.FLAGS.items()
                 if getattr(self, k) != v]
      errors += getattr(fam, "check", lambda c: [])(self)
    if errors:
      raise ValueError("invalid ModelConfig: " + "; ".join(errors))

  @classmethod
  def for_family(cls, family: str, **fields: Any) -> "ModelConfig":
    """A config with the flags `family` fixes (and its usual defaults) filled in."""
    if family not in registry.FAMILIES:
      raise ValueError(f"family {family!r} not in {sorted(registry.FAMILIES)}")
    fam = registry.FAMILIES[family]
    return cls(family=family, **{**getattr(fam, "DEFAULTS", {}), **fam.FLAGS, **fields})

  # -- per-layer views ------------------------------------------------------
  def is_sliding(self, layer: int) -> bool:
    return self.layer_types[layer] == SLIDING

  def window(self, layer: int) -> int | None:
    return self.sliding_window if self.is_sliding(layer) else None

  def rope_for(self, layer: int) -> RopeConfig:
    return self.rope_local if (self.rope_local is not None and self.is_sliding(layer)) else self.rope

  @property
  def attn_scale(self) -> float:
    return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @property
  def num_params(self) -> int:
    d, h, n, k, f = self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, self.intermediate_size
    attn = d * h * (2 * n + 2 * k) + (h * (n + 2 * k) if self.qkv_bias else 0) + (d if self.o_bias else 0)
    norms = d * (4 if self.sandwich_norm else 2) + (2 * h if self.qk_norm else 0)
    mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
    head = 0 if self.tie_word_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.num_layers * (attn + norms + mlp) + d + head

  # -- HF config.json -------------------------------------------------------
  @classmethod
  def from_hf(cls, hf_config: dict[str, Any]) -> "ModelConfig":
    """From an HF config.json dict; the family comes from architectures / model_type."""
    fam = registry.family_for(hf_config)
    return cls(family=fam.NAME, **fam.from_hf(registry.normalized_hf(hf_config, fam)))

  def to_hf(self) -> dict[str, Any]:
    """A config.json dict that transformers loads as this architecture."""
    fam = registry.FAMILIES[self.family]
    out = {"architectures": [fam.ARCHITECTURE], "model_type": fam.MODEL_TYPE, **common_to_hf(self), **fam.to_hf(self)}
    return out


