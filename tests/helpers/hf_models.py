"""Tiny random transformers models (float32) saved as sharded safetensors checkpoints.

Norm weights and biases are randomised: default-initialised norms (all ones /
all zeros) would hide a misplaced or missing norm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")

_BASE = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5,
             initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Per family: (transformers config class name, model class name, config fields over _BASE).
_FAMILY = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(attention_bias=True)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(num_hidden_layers=3, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                    final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_hidden_layers=3, sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=3.0,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                    rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                     "full_attention": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}})),
}

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def hf_config(family: str, *, tie: bool | None = None, **overrides: Any):
  """A transformers config object for a tiny model of `family`."""
  import transformers
  cfg_cls, _, fields = _FAMILY[family]
  kw = {**_BASE, **fields, **overrides}
  if tie is not None:
    kw["tie_word_embeddings"] = tie
  return getattr(transformers, cfg_cls)(**kw)


def randomize_(model, seed: int = 0, scale: float = 0.3) -> None:
  """Random norm weights and biases, in place (norms keep their 1 / 0 centre)."""
  import torch
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        p.add_(scale * torch.randn(p.shape, generator=g))


def make_tiny_hf(tmp_path: str | Path, family: str = "llama", *, tie: bool | None = None, seed: int = 0,
                 max_shard_size: str = "40KB", **overrides: Any):
  """Builds, randomises and saves (sharded) a tiny float32 HF causal LM; returns (dir, torch model)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  config = hf_config(family, tie=tie, **overrides)
  model = getattr(transformers, _FAMILY[family][1])(config).to(torch.float32).eval()
  randomize_(model, seed)
  out = Path(tmp_path) / f"{family}-hf"
  model.save_pretrained(out, max_shard_size=max_shard_size)
  return out, model


def hf_logits(model, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
  """float32 logits [B, T, V] of a torch model."""
  import torch
  with torch.no_grad():
    kw = {} if positions is None else {"position_ids": torch.tensor(np.array(positions), dtype=torch.long)}
    return model(torch.tensor(np.array(ids), dtype=torch.long), **kw).logits.float().numpy()


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
  """max|a - ref| / max|ref|."""
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(a - ref).max() / np.abs(ref).max())


_CACHE: dict[tuple, tuple[Path, Any]] = {}


def cached_tiny_hf(family: str = "llama", *, tie: bool | None = None, **overrides: Any):
  """make_tiny_hf, built once per process for the same arguments (tests only read it)."""
  import atexit
  import shutil
  import tempfile
  key = (family, tie, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
  if key not in _CACHE:
    root = tempfile.mkdtemp(prefix="jaxtune-tiny-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    _CACHE[key] = make_tiny_hf(root, family, tie=tie, **overrides)
  return _CACHE[key]


def packed_batch(lengths: list[list[int]], T: int, vocab: int, seed: int = 0):
  """ids, positions, segment_ids [B, T] for rows of packed segments (rest is padding, segment 0)."""
  rng = np.random.RandomState(seed)
  B = len(lengths)
  ids = rng.randint(3, vocab, (B, T)).astype(np.int32)
  pos = np.zeros((B, T), np.int32)
  seg = np.zeros((B, T), np.int32)
  for b, row in enumerate(lengths):
    start = 0
    for s, n in enumerate(row):
      pos[b, start:start + n] = np.arange(n)
      seg[b, start:start + n] = s + 1
      start += n
    assert start <= T
  return ids, pos, seg


def make_tiny_chat_model(tmp_path: str | Path, family: str = "llama", *, template: str = "llama3",
                         chat_template: str | None = None, seed: int = 0, **overrides: Any):
  """A tiny HF checkpoint with a locally trained tokenizer saved beside it (its vocabulary sized to the
  tokenizer; `template`/`chat_template` as in `make_tokenizer`); returns (dir, tokenizer)."""
  from tests.helpers.tokenizers import make_tokenizer
  _, tok = make_tokenizer(str(tmp_path), template=template, chat_template=chat_template)
  from transformers import AutoTokenizer
  model_dir, _ = make_tiny_hf(Path(tmp_path) / "model", family=family, vocab_size=len(tok), seed=seed, **overrides)
  tok.save_pretrained(model_dir)
  loaded = AutoTokenizer.from_pretrained(model_dir)
  if len(loaded) != len(tok):  # the family's tokenizer class adds tokens on load (Qwen2's <|endoftext|> as unk)
    tok = loaded
    model_dir, _ = make_tiny_hf(Path(tmp_path) / "model", family=family, vocab_size=len(tok), seed=seed, **overrides)
    tok.save_pretrained(model_dir)
  return model_dir, tok
