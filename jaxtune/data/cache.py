"""Optional on-disk cache of tokenized examples (`data.cache_dir`).

Tokenizing a large dataset takes minutes; a restarted run with the same files,
tokenizer and data settings loads the arrays back instead, and so does every
process of a multi-host run (`shares.py`: the directory may be local or gs://,
through jaxtune.io). The key hashes everything the store depends on: each file's
path, size and mtime (a Hugging Face dataset's own fingerprint, a hub dataset's
revision), the source formats and splits, the tokenizer (vocabulary, merges,
chat template, special tokens) and the data settings (seq_len, mask, overlong,
strict, reasoning, system, the shard; packing for preference pairs). Not the
number of processes or tokenize workers: they never change the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _stdio
import json

import numpy as np

from jaxtune import io
from jaxtune.data import hf_datasets, records
from jaxtune.data.examples import DataStats, ExampleStore

# bump when the store's contents change meaning (2: sequences per example; 3: stats of reasoning, tools, lost messages)
VERSION = 3


def tokenizer_fingerprint(tokenizer) -> str:
  h = hashlib.sha256()
  backend = getattr(tokenizer, "backend_tokenizer", None)
  h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
  h.update(str(tokenizer.chat_template).encode())
  h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
  return h.hexdigest()


def unit_fingerprint(file: str, split: str = "", subset: str = "") -> list:
  """What identifies the contents of one unit of `records.expand`."""
  kind = records.kind(file)
  if kind in records.HF_KINDS:
    name = file if kind == "hf_hub" else io.abspath(file)
    return [name, split, subset, hf_datasets.fingerprint(file, kind, split, subset)]
  size, mtime = io.stat(file)
  return [io.abspath(file), size, mtime]


def cache_key(sources, tokenizer, **settings) -> str:
  files = []
  for src in sources:
    split, subset = src.split, src.subset
    for f in records.expand(src.path):
      files.append(unit_fingerprint(f, split, subset) + [src.format])
  blob = json.dumps({"v": VERSION, "files": files, "tokenizer": tokenizer_fingerprint(tokenizer),
                     "settings": settings}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def path(cache_dir: str, key: str) -> str:
  """The cache file of `key`."""
  return io.join(cache_dir, f"examples-{key}.npz")


def load(cache_dir: str, key: str) -> tuple[ExampleStore, DataStats] | None:
  file = path(cache_dir, key)
  if not io.exists(file):
    return None
  with np.load(_stdio.BytesIO(io.read_bytes(file))) as z:
    store = ExampleStore(z["tokens"], z["mask"], z["offsets"], tuple(int(b) for b in z["source_bounds"]),
                         group=int(z["group"]))
    stats = DataStats(**json.loads(str(z["stats"])))
  return store, stats


def save(cache_dir: str, key: str, store: ExampleStore, stats: DataStats) -> str:
  """Writes the whole file at once (`io.write_bytes`), so readers never see half of it; `cache_dir` may be
  local or remote (gs://)."""
  if store.index is not None:
    raise ValueError("only a full store is cached, not a view")
  buf = _stdio.BytesIO()
  np.savez(buf, tokens=store.tokens, mask=store.mask, offsets=store.offsets,
           source_bounds=np.asarray(store.source_bounds, np.int64), group=np.asarray(store.group),
           stats=np.asarray(json.dumps(dataclasses.asdict(stats))))
  file = path(cache_dir, key)
  io.write_bytes(file, buf.getvalue())
  return file
