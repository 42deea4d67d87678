"""Sources -> one compact in-memory store of tokenized examples, with exact stats.

Everything is read and tokenized up front (records of this process's shard
only): the store is three flat numpy arrays, the stats are exact, and Grain
then only shuffles, mixes, packs and batches integers and slices.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from jaxtune.data import chat, packing, records

_BATCH = 256  # conversations per tokenizer call
MAX_SAMPLES_PER_REASON = 10


class DataError(ValueError):
  """The data cannot feed training; the message says why."""


@dataclasses.dataclass
class DataStats:
  """What the pipeline read and kept.

  Every record read is either an example or dropped: `records` = `examples` +
  `dropped`, and `dropped` = sum(`dropped_by_reason`). `malformed` counts the
  dropped records that failed schema/JSON checks (the rest were valid
  conversations dropped later: overlong, template errors, no trained token).
  """
  records: int = 0
  malformed: int = 0
  dropped: int = 0
  dropped_by_reason: dict = dataclasses.field(default_factory=dict)
  samples: list = dataclasses.field(default_factory=list)
  examples: int = 0
  truncated: int = 0
  tokens: int = 0
  loss_tokens: int = 0
  packing_efficiency: float = 0.0
  sources: list = dataclasses.field(default_factory=list)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def note(self, where: str, reason: str, detail: str = "", malformed: bool = False) -> None:
    self.malformed += malformed
    self.dropped += 1
    count = self.dropped_by_reason.get(reason, 0)
    self.dropped_by_reason[reason] = count + 1
    if count < MAX_SAMPLES_PER_REASON:
      self.samples.append({"where": where, "reason": reason, "detail": detail[:200]})

  def reasons(self) -> str:
    if not self.dropped_by_reason:
      return "no records"
    first = {}
    for s in self.samples:
      first.setdefault(s["reason"], s)
    return "; ".join(f"{r}: {c} (e.g. {first[r]['where']}: {first[r]['detail']})" if r in first else f"{r}: {c}"
                     for r, c in sorted(self.dropped_by_reason.items(), key=lambda kv: -kv[1]))


@dataclasses.dataclass(frozen=True)
class ExampleStore:
  """Examples as flat arrays: example i is tokens[offsets[i]:offsets[i+1]]."""
  tokens: np.ndarray  # int32 [total]
  mask: np.ndarray  # uint8 [total]
  offsets: np.ndarray  # int64 [n + 1]
  source_bounds: tuple[int, ...]  # example index where each source starts, + n

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = self.offsets[i], self.offsets[i + 1]
    return self.tokens[a:b], self.mask[a:b].astype(np.int32)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  def source_size(self, s: int) -> int:
    return self.source_bounds[s + 1] - self.source_bounds[s]


class _Builder:
  def __init__(self):
    self.ids, self.masks, self.bounds = [], [], [0]
    self.n = 0

  def add(self, ids: np.ndarray, mask: np.ndarray) -> None:
    self.ids.append(ids)
    self.masks.append(mask.astype(np.uint8))
    self.n += 1

  def end_source(self) -> None:
    self.bounds.append(self.n)

  def build(self) -> ExampleStore:
    lengths = np.array([len(x) for x in self.ids], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    return ExampleStore(cat(self.ids, np.int32), cat(self.masks, np.uint8), offsets, tuple(self.bounds))


def _conversations(src, stats: DataStats, strict: bool, shard_index: int, shard_count: int,
                   file_counts: dict):
  """Yields (where, file, messages) of a source's records in this shard."""
  k = -1
  for file in records.expand(src.path):
    file_counts.setdefault(file, [0, 0])
    fmt = None if src.format == "auto" else src.format
    for f, n, rec in records.read_records(file):
      if fmt is None:
        fmt = records.detect_format(rec)
      k += 1
      if k % shard_count != shard_index:
        continue
      stats.records += 1
      file_counts[file][0] += 1
      where = records.where(f, n)
      try:
        yield where, file, records.to_messages(rec, fmt or "auto")
      except records.MalformedRecord as e:
        if strict:
          raise DataError(f"{where}: malformed record ({e}); data.strict is set") from e
        stats.note(where, e.reason, e.detail, malformed=True)


def load_examples(sources: Sequence, tokenizer, *, seq_len: int, mask: str = "assistant",
                  overlong: str = "drop", strict: bool = False, shard_index: int = 0,
                  shard_count: int = 1, max_examples: int | None = None) -> tuple[ExampleStore, DataStats]:
  """Reads, validates and tokenizes `sources` (SourceCfg-like) into a store.

  Raises DataError on the first bad record when `strict`; when a file (with
  one shard) or the whole split has no valid example, with the drop reasons.
  """
  if not sources:
    raise DataError("no data sources given")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
  stats, builder, file_counts = DataStats(), _Builder(), {}
  for src in sources:
    before = (stats.records, builder.n, stats.tokens)
    pending: list = []
    for item in _conversations(src, stats, strict, shard_index, shard_count, file_counts):
      pending.append(item)
      if len(pending) == _BATCH:
        _tokenize(pending, tokenizer, builder, stats, file_counts, seq_len, mask, overlong, strict)
        pending = []
      if max_examples is not None and builder.n + len(pending) >= max_examples:
        break
    _tokenize(pending, tokenizer, builder, stats, file_counts, seq_len, mask, overlong, strict)
    builder.end_source()
    stats.sources.append({"path": src.path, "format": src.format, "weight": src.weight,
                          "records": stats.records - before[0], "examples": builder.n - before[1],
                          "tokens": stats.tokens - before[2]})
    if max_examples is not None and builder.n >= max_examples:
      break
  if shard_count == 1 and max_examples is None:
    for file, (n_records, n_valid) in file_counts.items():
      if n_valid == 0:
        raise DataError(f"{file}: no valid example in {n_records} records ({stats.reasons()})")
  if builder.n == 0:
    raise DataError(f"no valid example in {stats.records} records (shard {shard_index}/{shard_count}): "
                    f"{stats.reasons()}")
  stats.examples = builder.n
  logging.info("data: %d records -> %d examples, %d tokens (%d trained), dropped: %s",
               stats.records, stats.examples, stats.tokens, stats.loss_tokens, stats.dropped_by_reason)
  return builder.build(), stats


def _tokenize(items, tokenizer, builder: _Builder, stats: DataStats, file_counts: dict,
              seq_len: int, mask: str, overlong: str, strict: bool) -> None:
  if not items:
    return
  results = chat.encode_batch([m for _, _, m in items], tokenizer, mask)
  for (where, file, _), res in zip(items, results):
    try:
      if isinstance(res, chat.DropExample):
        raise res
      ids, loss_mask, truncated = packing.prepare_example(*res, seq_len=seq_len, overlong=overlong)
    except chat.DropExample as e:
      if strict and e.reason not in ("overlong", "truncated_no_loss_tokens"):
        raise DataError(f"{where}: example dropped ({e}); data.strict is set") from e
      stats.note(where, e.reason, e.detail)
      continue
    builder.add(ids, loss_mask)
    file_counts[file][1] += 1
    stats.truncated += truncated
    stats.tokens += len(ids)
    stats.loss_tokens += int(loss_mask.sum())
