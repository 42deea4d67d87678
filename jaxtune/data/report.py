"""`jaxtune data stats` / `jaxtune data inspect`: the pipeline seen from outside."""

from __future__ import annotations

import numpy as np

from jaxtune.data import chat
from jaxtune.data.examples import load_examples
from jaxtune.data.pipeline import build_pipeline

_ANSI_TRAINED, _ANSI_RESET = "\033[1;32m", "\033[0m"


def _tokenizer(cfg):
  from jaxtune.weights.hf_load import resolve_model_dir
  return chat.load_tokenizer(str(resolve_model_dir(cfg.model.path)), cfg.data.chat_template)


def _preference(cfg) -> bool:
  """Whether the run trains on preference pairs (train.objective=dpo)."""
  return cfg.train.objective == "dpo"


def stats(cfg) -> dict:
  """DataStats of the train split (one process) as a dict; for preference data `examples` counts pairs."""
  tok = _tokenizer(cfg)
  return build_pipeline(cfg.data, tok, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                        preference=_preference(cfg)).stats.to_dict()


def inspect(cfg, n: int = 3, *, color: bool = False) -> list[dict]:
  """The first n train examples in file order, as the model sees them (unpacked): {"input_ids",
  "loss_mask", "text"}, or for preference pairs {"chosen": {...}, "rejected": {...}}."""
  tok = _tokenizer(cfg)
  d = cfg.data
  store, _ = load_examples(d.train, tok, seq_len=d.seq_len, mask=d.mask, overlong=d.overlong,
                           strict=d.strict, max_examples=n, preference=_preference(cfg), packing=d.packing,
                           reasoning=d.reasoning, system=d.system)

  def one(ids, mask):
    return {"input_ids": ids.tolist(), "loss_mask": mask.tolist(), "text": render_example(tok, ids, mask, color=color)}

  out = []
  for i in range(min(n, len(store))):
    seqs = [one(ids, mask) for _, ids, mask in store.unit(i)]
    out.append(seqs[0] if store.group == 1 else {"chosen": seqs[0], "rejected": seqs[1]})
  return out


def render_example(tokenizer, ids, mask, *, color: bool = False) -> str:
  """Decoded text with trained spans marked: [[...]] (or green with color=True)."""
  ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]) != 0)) if len(ids) else []
  bounds = [0, *[int(e) for e in edges], len(ids)]
  open_, close = (_ANSI_TRAINED, _ANSI_RESET) if color else ("[[", "]]")
  parts = []
  for a, b in zip(bounds[:-1], bounds[1:]):
    if b <= a:
      continue
    text = tokenizer.decode(ids[a:b].tolist(), skip_special_tokens=False)
    parts.append(f"{open_}{text}{close}" if mask[a] else text)
  return "".join(parts)
