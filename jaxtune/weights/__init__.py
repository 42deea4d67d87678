"""HF checkpoint <-> NNX model: streaming safetensors load and export."""

from jaxtune.weights.hf_export import save_pretrained, save_state_pretrained
from jaxtune.weights.hf_load import CheckpointError, load_pretrained

__all__ = ["load_pretrained", "save_pretrained", "save_state_pretrained", "CheckpointError"]
