"""Architectures of the hub models the recipes in `configs/` tune, without the hub.

`HF_CONFIGS[hub_id]` is the model's `config.json` in the transformers-5 form
(`rope_parameters`, `layer_types`), with the architecture numbers of the
published checkpoints; `preset_model_config(hub_id)` is its `ModelConfig`.
They let tests and memory estimates build the real shapes abstractly
(`nnx.eval_shape`) on a machine with no network. Training itself always reads
the `config.json` that comes with the weights.

Gemma 3 12B is a multimodal checkpoint; the entry here is its text decoder as
`Gemma3ForCausalLM` (model_type `gemma3_text`).
"""

from __future__ import annotations

import copy
from typing import Any

from jaxtune.models.config import FULL, SLIDING, ModelConfig

_LLAMA3_EOS = [128001, 128008, 128009]  # <|end_of_text|>, <|eom_id|>, <|eot_id|>


def _llama3_rope(factor: float) -> dict[str, Any]:
  return {"rope_type": "llama3", "rope_theta": 500000.0, "factor": factor, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _llama3(*, hidden: int, intermediate: int, layers: int, heads: int, head_dim: int, tied: bool,
            rope_factor: float) -> dict[str, Any]:
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": 128256, "hidden_size": hidden, "intermediate_size": intermediate,
      "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": head_dim,
      "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
      "rope_parameters": _llama3_rope(rope_factor), "attention_bias": False, "attention_dropout": 0.0,
      "mlp_bias": False, "tie_word_embeddings": tied, "initializer_range": 0.02,
      "bos_token_id": 128000, "eos_token_id": list(_LLAMA3_EOS), "torch_dtype": "bfloat16",
  }


def _gemma3_layer_types(n: int, every: int = 6) -> list[str]:
  """Five sliding-window layers, then one global layer, repeated."""
  return [FULL if (i + 1) % every == 0 else SLIDING for i in range(n)]


HF_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B-Instruct": _llama3(hidden=2048, intermediate=8192, layers=16, heads=32, head_dim=64,
                                                tied=True, rope_factor=32.0),
    "meta-llama/Llama-3.2-3B-Instruct": _llama3(hidden=3072, intermediate=8192, layers=28, heads=24, head_dim=128,
                                                tied=True, rope_factor=32.0),
    "meta-llama/Llama-3.1-8B-Instruct": _llama3(hidden=4096, intermediate=14336, layers=32, heads=32, head_dim=128,
                                                tied=False, rope_factor=8.0),
    "meta-llama/Llama-3.1-70B-Instruct": _llama3(hidden=8192, intermediate=28672, layers=80, heads=64, head_dim=128,
                                                 tied=False, rope_factor=8.0),
    "Qwen/Qwen3-8B": {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "attention_bias": False, "attention_dropout": 0.0,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 36,
        "layer_types": [FULL] * 36,
        "tie_word_embeddings": False, "initializer_range": 0.02,
        "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
    },
    "google/gemma-3-12b-it": {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": 262208, "hidden_size": 3840, "intermediate_size": 15360,
        "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
        "rope_parameters": {
            FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
        },
        "sliding_window": 1024, "layer_types": _gemma3_layer_types(48),
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "attention_bias": False, "attention_dropout": 0.0, "use_bidirectional_attention": False,
        "tie_word_embeddings": True, "initializer_range": 0.02,
        "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0, "torch_dtype": "bfloat16",
    },
}


def hf_config(hub_id: str) -> dict[str, Any]:
  """A copy of the preset `config.json` dict of `hub_id`."""
  if hub_id not in HF_CONFIGS:
    raise KeyError(f"no preset for {hub_id!r}; presets: {sorted(HF_CONFIGS)}")
  return copy.deepcopy(HF_CONFIGS[hub_id])


def preset_model_config(hub_id: str) -> ModelConfig:
  """The `ModelConfig` of a preset hub model, through `ModelConfig.from_hf`."""
  return ModelConfig.from_hf(hf_config(hub_id))
