"""Supported families: HF architecture / model_type -> family module."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from jaxtune.errors import CheckpointError
from jaxtune.models import gemma2, gemma3, llama, mistral, qwen2, qwen3

FAMILIES: dict[str, ModuleType] = {m.NAME: m for m in (llama, mistral, qwen2, qwen3, gemma2, gemma3)}


def supported() -> str:
  return ", ".join(f"{m.ARCHITECTURE} (model_type {m.MODEL_TYPE!r})" for m in FAMILIES.values())


def family_for(hf_config: dict[str, Any]) -> ModuleType:
  """The family of an HF config dict: by `architectures[0]`, else by `model_type`."""
  archs = hf_config.get("architectures") or []
  model_type = hf_config.get("model_type")
  for m in FAMILIES.values():
    if (archs and archs[0] == m.ARCHITECTURE) or (not archs and model_type == m.MODEL_TYPE):
      return m
  raise CheckpointError(f"unsupported architecture {archs or None} (model_type {model_type!r}); supported: {supported()}")


def normalized_hf(hf_config: dict[str, Any], fam: ModuleType) -> Any:
  """The transformers config object for the dict: HF's own defaults and RoPE
  normalisation (old `rope_theta`/`rope_scaling` keys -> `rope_parameters`)."""
  from transformers import AutoConfig
  d = {k: v for k, v in hf_config.items() if k not in ("model_type", "transformers_version")}
  return AutoConfig.for_model(fam.MODEL_TYPE, **d)
