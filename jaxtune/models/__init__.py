"""Model definitions: one shared decoder driven by ModelConfig flags."""

from jaxtune.models.config import ModelConfig, RopeConfig
from jaxtune.models.registry import FAMILIES
from jaxtune.models.transformer import CausalLM, build_model

__all__ = ["ModelConfig", "RopeConfig", "CausalLM", "build_model", "FAMILIES"]
