"""Optional on-disk cache of tokenized examples (`data.cache_dir`).

Tokenizing a large dataset takes minutes per process; a restarted run with the
same files, tokenizer and data settings loads the arrays back instead. The key
hashes everything the store depends on: each file's path, size and mtime, the
source formats, the tokenizer (vocabulary, merges, template, special tokens),
seq_len, mask, overlong, strict and the shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np

from jaxtune.data import records
from jaxtune.data.examples import DataStats, ExampleStore

VERSION = 1  # bump when the store's contents change meaning


def tokenizer_fingerprint(tokenizer) -> str:
  h = hashlib.sha256()
  backend = getattr(tokenizer, "backend_tokenizer", None)
  h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
  h.update(str(tokenizer.chat_template).encode())
  h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
  return h.hexdigest()


def cache_key(sources, tokenizer, **settings) -> str:
  files = []
  for src in sources:
    for f in records.expand(src.path):
      st = os.stat(f)
      files.append([os.path.abspath(f), st.st_size, st.st_mtime_ns, src.format])
  blob = json.dumps({"v": VERSION, "files": files, "tokenizer": tokenizer_fingerprint(tokenizer),
                     "settings": settings}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:32]


def load(cache_dir: str, key: str) -> tuple[ExampleStore, DataStats] | None:
  path = os.path.join(cache_dir, f"examples-{key}.npz")
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    store = ExampleStore(z["tokens"], z["mask"], z["offsets"], tuple(int(b) for b in z["source_bounds"]))
    stats = DataStats(**json.loads(str(z["stats"])))
  return store, stats


def save(cache_dir: str, key: str, store: ExampleStore, stats: DataStats) -> str:
  """Writes atomically (temp file, then rename), so readers never see half a file."""
  os.makedirs(cache_dir, exist_ok=True)
  path = os.path.join(cache_dir, f"examples-{key}.npz")
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, tokens=store.tokens, mask=store.mask, offsets=store.offsets,
               source_bounds=np.asarray(store.source_bounds, np.int64),
               stats=np.asarray(json.dumps(dataclasses.asdict(stats))))
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path
