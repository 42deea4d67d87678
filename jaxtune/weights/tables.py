"""The one place that knows HF checkpoint key strings.

NNX attribute paths mirror HF names, so each family's table lists only the
renames: `kernel` <-> `weight` (transposed: kernels are [in, out], HF weights
[out, in]) and `embedding` <-> `weight`. Load and export both go through
`hf_key(family, path)`; a scanned model's stacked decoder-block parameters
(`model.layers.<name>`) go through the per-layer paths `stacked_layer_paths` gives.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

Index = tuple[slice, ...]


@dataclasses.dataclass(frozen=True)
class Transform:
  """How a Flax array relates to its HF tensor (both directions, and for slices)."""
  name: str

  def to_flax(self, a: np.ndarray) -> np.ndarray:
    return a.T if self.name == "transpose" else a

  def to_hf(self, a: np.ndarray) -> np.ndarray:
    return a.T if self.name == "transpose" else a

  def hf_shape(self, flax_shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(flax_shape)[::-1] if self.name == "transpose" else tuple(flax_shape)

  def hf_index(self, flax_index: Index) -> Index:
    """The HF slice holding the Flax slice `flax_index`."""
    return tuple(flax_index)[::-1] if self.name == "transpose" else tuple(flax_index)


IDENTITY = Transform("identity")
TRANSPOSE = Transform("transpose")


@dataclasses.dataclass(frozen=True)
class Rule:
  flax: str  # regex over the dotted NNX path
  hf: str  # replacement template
  transform: Transform


# Shared by every supported family (their HF modules use the same names).
_DECODER = (
    Rule(r"lm_head\.kernel", r"lm_head.weight", TRANSPOSE),
    Rule(r"model\.embed_tokens\.embedding", r"model.embed_tokens.weight", IDENTITY),
    Rule(r"(model\..+)\.kernel", r"\1.weight", TRANSPOSE),
    Rule(r"(model\..+\.(?:weight|bias))", r"\1", IDENTITY),
)

TABLES: dict[str, tuple[Rule, ...]] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma2": _DECODER,
    "gemma3": _DECODER,
}

# Checkpoint entries that carry no parameter of ours (non-persistent buffers
# some old exports contain); a tied model's redundant lm_head is handled by the loader.
IGNORED_HF_KEYS = (re.compile(r".*\.rotary_emb\.inv_freq"), re.compile(r".*\.attn\.masked_bias"))
TIED_HEAD_KEY = "lm_head.weight"


def dotted(path: Sequence) -> str:
  return ".".join(str(p) for p in path)


def hf_key(family: str, path: Sequence) -> tuple[str, Transform]:
  """HF tensor name and transform for an NNX parameter path."""
  if family not in TABLES:
    raise ValueError(f"no weight table for family {family!r}; have {sorted(TABLES)}")
  name = dotted(path)
  for rule in TABLES[family]:
    if re.fullmatch(rule.flax, name):
      return re.sub(f"^{rule.flax}$", rule.hf, name), rule.transform
  raise KeyError(f"parameter {name!r} has no HF name in the {family} weight table")


def stacked_layer_paths(path: Sequence, num_layers: int) -> list[tuple] | None:
  """For a parameter of scanned decoder blocks (`model.layers.<name>...`, its first axis the layer), the
  unstacked per-layer paths `model.layers.<i>.<name>...` it holds, layer by layer; None for any other path."""
  path = tuple(path)
  if len(path) > 2 and path[:2] == ("model", "layers") and not str(path[2]).isdigit():
    return [path[:2] + (i,) + path[2:] for i in range(num_layers)]
  return None


def stacked_path(path: Sequence) -> tuple[tuple, int] | None:
  """The inverse: (scanned path, layer) of a per-layer path `model.layers.<i>.<name>...`; None for any other."""
  path = tuple(path)
  if len(path) > 3 and path[:2] == ("model", "layers") and str(path[2]).isdigit():
    return path[:2] + path[3:], int(path[2])
  return None


def is_ignored(key: str) -> bool:
  return any(p.fullmatch(key) for p in IGNORED_HF_KEYS)
