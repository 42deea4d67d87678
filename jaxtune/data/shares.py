"""Tokenization split across the processes of a run, and the cache of its result that they share.

Every process of a run builds the same global batches from the same store of examples
(batches depend on the data, seed and batch size only). `load` gets that store for a run of
several processes (`pipeline.py` calls `examples.load_examples` when there is one):

  - with `data.cache_dir` every process looks it up under `cache.cache_key`; the work is
    skipped only when every process finds it (the processes vote with a collective);
  - else (`load_split`) process p tokenizes the records k with k % P == p of each source
    (`examples.load_share`), the shares are exchanged with a collective (every process
    gets all of them, in fixed-size chunks: no shared file system needed), and `merge`
    puts the examples back in record order: store and stats equal one process's byte for
    byte, whatever P;
  - `save_everywhere`: process 0 writes the cache; after a barrier, a process that does not
    see the file (a cache_dir local to each host) writes its own copy.

An error in any process (a bad record under data.strict, a missing file) is raised by
every process: the first in record order, so its message is the one a single process gives.
"""

from __future__ import annotations

import dataclasses
import io as _stdio
import json
import logging
import sys

import numpy as np

from jaxtune import errors, io
from jaxtune.data import cache
from jaxtune.data.examples import (MAX_SAMPLES_PER_REASON, DataStats, ExampleStore, RecordError, Share, finish,
                                   load_share)

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 64 << 20  # one collective moves at most this much per process...
MAX_GATHER_BYTES = 256 << 20  # ...and at most this much in all (the gathered chunk sits on every local device)
MIN_CHUNK_BYTES = 64 << 10
_MISS, _HIT, _FAILED = 0, 1, 2  # a process's cache lookup, as `load` gathers it
_SUMMED = ("records", "malformed", "dropped", "truncated", "tokens", "loss_tokens", "examples",
           "examples_with_reasoning", "examples_with_tool_calls")


def processes() -> tuple[int, int]:
  """(this process's index, process count) of a `jax.distributed` run; (0, 1) when it is not initialised
  (without starting a backend: `jaxtune data stats` must not grab the accelerators)."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return 0, 1
  return jax.process_index(), jax.process_count()


def load(sources, tokenizer, settings: dict, *, cache_dir: str, workers: int, index: int,
         count: int) -> tuple[ExampleStore, DataStats]:
  """The store of every record for process `index` of `count` (every process must call it): from the cache
  when every process finds it there, else tokenized by `load_split` and then cached (`save_everywhere`).
  A process that cannot compute the cache key fails them all; an unreadable cache file is a miss."""
  own: Exception | None = None
  key, hit = "", None
  if cache_dir:
    try:
      key = cache.cache_key(sources, tokenizer, **settings)
    except Exception as e:  # noqa: BLE001 - every process must reach the vote; raised below
      own = e
    if own is None:
      try:
        hit = cache.load(cache_dir, key)
      except Exception as e:  # noqa: BLE001 - the cache only saves time
        log.warning("data: could not read the tokenized examples cache in %s (%s: %s); tokenizing again", cache_dir,
                    type(e).__name__, e)
  votes = gather_ints(_FAILED if own is not None else _HIT if hit is not None else _MISS)
  if _FAILED in votes:
    if own is not None:
      raise own
    raise errors.DataError(f"process {votes.index(_FAILED)} could not compute the key of the tokenized examples "
                           f"cache in {cache_dir} (its log says why)")
  if all(v == _HIT for v in votes):
    log.info("data: tokenized examples loaded from %s (key %s)", cache_dir, key)
    return hit
  store, stats = load_split(sources, tokenizer, settings, workers=workers, index=index, count=count)
  if cache_dir:
    save_everywhere(cache_dir, key, store, stats, index)
  return store, stats


def load_split(sources, tokenizer, settings: dict, *, workers: int, index: int,
               count: int) -> tuple[ExampleStore, DataStats]:
  """The store of every record, process `index` of `count` tokenizing its share (records k % count == index
  of each source); `settings`: load_examples' keywords for one shard. Every process must call it."""
  own: Exception | None = None
  try:
    share = load_share(sources, tokenizer, workers=workers, **dict(settings, shard_index=index, shard_count=count))
    blob = encode_share(share)
  except Exception as e:  # noqa: BLE001 - every process must reach the exchange; raised below
    own, blob = e, _encode_error(e)
  parts = [decode(b) for b in allgather_bytes(blob)]
  failed = [(p.get("record", (-1, -1)), i, p) for i, p in enumerate(parts) if isinstance(p, dict)]
  if failed:
    _, who, first = min(failed, key=lambda f: (tuple(f[0]), f[1]))
    if who == index and own is not None:
      raise own
    raise _rebuilt(first, who) from own
  return finish(merge(parts), label=" (shard 0/1)")


def save_everywhere(cache_dir: str, key: str, store: ExampleStore, stats: DataStats, index: int) -> None:
  """Process 0 writes the cache; then each process that does not see it (a host-local dir) writes its own.
  A failed write is a warning: every process must reach the barrier."""
  if index == 0:
    _try_save(cache_dir, key, store, stats)
  barrier("jaxtune-data-cache")
  if index != 0 and not io.exists(cache.path(cache_dir, key)):
    _try_save(cache_dir, key, store, stats)


def _try_save(cache_dir: str, key: str, store: ExampleStore, stats: DataStats) -> None:
  try:
    cache.save(cache_dir, key, store, stats)
  except Exception as e:  # noqa: BLE001 - the cache only saves time
    log.warning("data: could not write the tokenized examples to %s: %s: %s", cache_dir, type(e).__name__, e)


def merge(parts: list[Share]) -> Share:
  """The shares of all processes (part p: records k % P == p) as the share of every record, examples in
  record order per source; the stats summed, the samples the first of each reason in record order."""
  group = parts[0].store.group
  n_sources = len(parts[0].store.source_bounds) - 1
  # every stored sequence of every part, numbered globally: part p's sequence j is seq_base[p] + j
  seq_base = np.cumsum([0] + [len(p.store.offsets) - 1 for p in parts])
  tok_base = np.cumsum([0] + [len(p.store.tokens) for p in parts])
  starts = np.concatenate([p.store.offsets[:-1] + b for p, b in zip(parts, tok_base)])
  lengths = np.concatenate([np.diff(p.store.offsets) for p in parts])
  order, bounds, records = [], [0], []
  for s in range(n_sources):
    rec, ex = [], []
    for p, part in enumerate(parts):
      lo, hi = part.store.source_bounds[s], part.store.source_bounds[s + 1]
      rec.append(part.records[lo:hi])
      ex.append(seq_base[p] // group + np.arange(lo, hi))  # a global example id: its first sequence / group
    rec, ex = np.concatenate(rec), np.concatenate(ex)
    o = np.argsort(rec, kind="stable")
    order.append(ex[o])
    records.append(rec[o])
    bounds.append(bounds[-1] + len(o))
  examples = np.concatenate(order).astype(np.int64)
  seqs = (examples[:, None] * group + np.arange(group)).reshape(-1)
  new_lengths = lengths[seqs]
  offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
  gather = np.repeat(starts[seqs] - offsets[:-1], new_lengths) + np.arange(offsets[-1])
  tokens = np.concatenate([p.store.tokens for p in parts])[gather]
  mask = np.concatenate([p.store.mask for p in parts])[gather]
  store = ExampleStore(tokens.astype(np.int32), mask.astype(np.uint8), offsets, tuple(int(b) for b in bounds),
                       group=group)
  stats, sample_records = _merged_stats(parts, n_sources)
  file_counts: dict = {}
  for part in parts:
    for f, (n, v) in part.file_counts.items():
      c = file_counts.setdefault(f, [0, 0])
      c[0] += n
      c[1] += v
  return Share(store, stats, np.concatenate(records) if records else np.zeros(0, np.int64), sample_records,
               file_counts)


def _merged_stats(parts: list[Share], n_sources: int) -> tuple[DataStats, list]:
  stats = DataStats()
  for part in parts:
    for f in _SUMMED:
      setattr(stats, f, getattr(stats, f) + getattr(part.stats, f))
    for field in ("dropped_by_reason", "messages_not_rendered"):
      total = getattr(stats, field)
      for k, v in getattr(part.stats, field).items():
        total[k] = total.get(k, 0) + v
  for s in range(n_sources):
    entry = dict(parts[0].stats.sources[s])
    for k in ("records", "examples", "tokens"):
      entry[k] = sum(p.stats.sources[s][k] for p in parts)
    stats.sources.append(entry)
  noted = sorted(((tuple(r), sample) for part in parts for r, sample in zip(part.sample_records, part.stats.samples)),
                 key=lambda x: x[0])
  per_reason: dict = {}
  sample_records = []
  for r, sample in noted:
    if per_reason.get(sample["reason"], 0) < MAX_SAMPLES_PER_REASON:
      per_reason[sample["reason"]] = per_reason.get(sample["reason"], 0) + 1
      stats.samples.append(sample)
      sample_records.append(list(r))
  return stats, sample_records


def encode_share(share: Share) -> bytes:
  st = share.store
  meta = {"stats": dataclasses.asdict(share.stats), "sample_records": share.sample_records,
          "file_counts": share.file_counts}
  buf = _stdio.BytesIO()
  np.savez(buf, tokens=st.tokens, mask=st.mask, offsets=st.offsets, source_bounds=np.asarray(st.source_bounds, np.int64),
           group=np.asarray(st.group), records=share.records, meta=np.asarray(json.dumps(meta)))
  return buf.getvalue()


def _encode_error(e: Exception) -> bytes:
  info = {"type": type(e).__name__, "message": str(e), "user": isinstance(e, errors.UserError)}
  if isinstance(e, RecordError):
    info["record"] = list(e.record)
  buf = _stdio.BytesIO()
  np.savez(buf, error=np.asarray(json.dumps(info)))
  return buf.getvalue()


def decode(blob: bytes) -> Share | dict:
  """A Share, or the dict describing the error a process raised instead."""
  with np.load(_stdio.BytesIO(blob)) as z:
    if "error" in z:
      return json.loads(str(z["error"]))
    meta = json.loads(str(z["meta"]))
    store = ExampleStore(z["tokens"], z["mask"], z["offsets"], tuple(int(b) for b in z["source_bounds"]),
                         group=int(z["group"]))
    return Share(store, DataStats(**meta["stats"]), z["records"], meta["sample_records"], meta["file_counts"])


def _rebuilt(info: dict, process: int) -> Exception:
  """Another process's error, raised here: the same UserError class and message, or a RuntimeError."""
  cls = getattr(errors, info["type"], None)
  if info["user"] and isinstance(cls, type) and issubclass(cls, errors.UserError):
    return cls(info["message"])
  if info["user"]:
    return errors.DataError(info["message"])
  return RuntimeError(f"process {process} failed while tokenizing its share of the data: {info['type']}: "
                      f"{info['message']}")


# Collectives (jax.experimental.multihost_utils): every process calls them in the same order.

def gather_ints(value: int) -> list[int]:
  """Every process's `value`, in process order."""
  from jax.experimental import multihost_utils
  return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).reshape(-1)]


def barrier(name: str) -> None:
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices(name)


def chunk_bytes(largest: int, count: int) -> int:
  """Bytes per process of one collective: a power of two, large enough for `largest` when it is small,
  bounded by MAX_CHUNK_BYTES and by MAX_GATHER_BYTES over all `count` processes."""
  cap = max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, MAX_GATHER_BYTES // count))
  size = MIN_CHUNK_BYTES
  while size < largest and size < cap:
    size *= 2
  return min(size, cap)


def allgather_bytes(blob: bytes) -> list[bytes]:
  """Every process's `blob` on every process (process order), in chunks of `chunk_bytes`."""
  from jax.experimental import multihost_utils
  size = np.frombuffer(np.asarray([len(blob)], "<u8").tobytes(), np.uint8)  # 8 bytes: no int64 on devices
  sizes = np.asarray(multihost_utils.process_allgather(size)).reshape(-1, 8).copy().view("<u8").reshape(-1)
  chunk = chunk_bytes(int(sizes.max()), len(sizes))
  n_chunks = max(1, -(-int(sizes.max()) // chunk))
  mine = np.zeros(n_chunks * chunk, np.uint8)
  mine[:len(blob)] = np.frombuffer(blob, np.uint8)
  got = [bytearray() for _ in sizes]
  for c in range(n_chunks):
    part = np.asarray(multihost_utils.process_allgather(mine[c * chunk:(c + 1) * chunk]))
    for p in range(len(sizes)):
      got[p] += part[p].tobytes()
  return [bytes(g[:int(n)]) for g, n in zip(got, sizes)]
