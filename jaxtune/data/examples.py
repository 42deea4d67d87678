"""Sources -> one compact in-memory store of tokenized examples, with exact stats.

Everything is read and tokenized up front: the store is three flat numpy arrays,
the stats are exact, and Grain then only shuffles, mixes, packs and batches
integers and slices. Records are read here and tokenized in chunks by
`tokenize.Pool` (this process or worker processes, outcomes applied in record
order, so the store is the same for any number of workers). `load_share` reads a
share of the records (k % n == i): `shares.py` splits tokenization across the
processes of a run that way and merges the shares. Pre-tokenized records
(`input_ids`, `loss_mask`) skip the chat template but are checked and fitted to
seq_len like the others.

`split_holdout` carves a seeded held-out eval set out of a store
(`data.eval_fraction`); both parts are views sharing the store's arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Sequence

import numpy as np

from jaxtune import log as log_lib
from jaxtune.data import records, tokenize
from jaxtune.errors import DataError  # noqa: F401 - raised here, defined with the other user errors

log = logging.getLogger(__name__)
_BATCH = 256  # conversations per tokenizer call (a chunk of tokenize.Pool)
MAX_SAMPLES_PER_REASON = 10


@dataclasses.dataclass
class DataStats:
  """What the pipeline read and kept.

  Every record read is either an example of this split, held out for the other
  split (`data.eval_fraction`), or dropped: `records` = `examples` + `held_out` +
  `dropped`, and `dropped` = sum(`dropped_by_reason`). `malformed` counts the
  dropped records that failed schema/JSON checks (the rest were valid
  conversations dropped later: overlong, template errors, no trained token).
  `tokens`/`loss_tokens` (and per source `examples`/`tokens`) are this split's.
  `examples_with_reasoning` / `examples_with_tool_calls` count the examples kept
  whose assistant turns carry reasoning / tool calls; `messages_not_rendered`
  counts, by role, the system/user/tool messages of kept examples whose content
  the chat template did not render (Mistral v0.3 drops the system message of a
  conversation that ends with a reply; `data.system=merge_into_first_user`).
  Those three describe everything loaded, before a held-out split.
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
  held_out: int = 0
  examples_with_reasoning: int = 0
  examples_with_tool_calls: int = 0
  messages_not_rendered: dict = dataclasses.field(default_factory=dict)

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
  """Examples as flat arrays: stored example j is tokens[offsets[j]:offsets[j+1]].

  With `index` the store is a view of some of them: example i is stored example
  index[i] (sorted, so sources stay contiguous), sharing the arrays.
  """
  tokens: np.ndarray  # int32 [total]
  mask: np.ndarray  # uint8 [total]
  offsets: np.ndarray  # int64 [stored sequences + 1]
  source_bounds: tuple[int, ...]  # example index where each source starts, + n
  index: np.ndarray | None = None  # int64 [n]: a view's stored examples; None: all, in order
  group: int = 1  # sequences per example: 1 (SFT), 2 (a preference pair: chosen, rejected)

  def __len__(self) -> int:
    return (len(self.offsets) - 1) // self.group if self.index is None else len(self.index)

  def _stored(self, i: int) -> int:
    return i if self.index is None else int(self.index[i])

  def sequence(self, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Stored sequence j: (ids, mask)."""
    a, b = self.offsets[j], self.offsets[j + 1]
    return self.tokens[a:b], self.mask[a:b].astype(np.int32)

  def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Example i of a one-sequence store: (ids, mask)."""
    return self.sequence(self._stored(i) * self.group)

  def unit(self, i: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Example i as its sequences: [(stored sequence id, ids, mask), ...]."""
    first = self._stored(i) * self.group
    return [(j, *self.sequence(j)) for j in range(first, first + self.group)]

  def _per_example(self, per_sequence: np.ndarray) -> np.ndarray:
    per = per_sequence.reshape(-1, self.group).sum(axis=1) if self.group > 1 else per_sequence
    return per if self.index is None else per[self.index]

  @property
  def lengths(self) -> np.ndarray:
    """Tokens per example (all its sequences)."""
    return self._per_example(np.diff(self.offsets))

  def loss_counts(self) -> np.ndarray:
    """Trained tokens per example."""
    if len(self.offsets) < 2 or self.offsets[-1] == 0:
      return np.zeros(len(self), np.int64)
    per = np.add.reduceat(self.mask.astype(np.int64), self.offsets[:-1])
    per[np.diff(self.offsets) == 0] = 0
    return self._per_example(per)

  def select(self, stored: np.ndarray) -> "ExampleStore":
    """A view of the given stored example ids (of a full store), kept in order."""
    if self.index is not None:
      raise ValueError("select() takes a full store, not a view")
    stored = np.sort(np.asarray(stored, np.int64))
    bounds = tuple(int(b) for b in np.searchsorted(stored, self.source_bounds))
    return ExampleStore(self.tokens, self.mask, self.offsets, bounds, stored, self.group)

  def source_size(self, s: int) -> int:
    return self.source_bounds[s + 1] - self.source_bounds[s]


def holdout_ids(store: ExampleStore, fraction: float, seed: int) -> np.ndarray:
  """Sorted ids of the examples held out for eval: round(fraction * n) of each source's n,
  drawn by a seeded permutation, never a source's last example."""
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"eval fraction must be in (0, 1), got {fraction}")
  picked = []
  for s in range(len(store.source_bounds) - 1):
    lo, hi = store.source_bounds[s], store.source_bounds[s + 1]
    k = min(int(round(fraction * (hi - lo))), max(hi - lo - 1, 0))
    if k > 0:
      rng = np.random.default_rng([seed % (1 << 63), 0x686F6C64, s])
      picked.append(lo + rng.permutation(hi - lo)[:k])
  return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def split_holdout(store: ExampleStore, stats: DataStats, fraction: float,
                  seed: int) -> dict[str, tuple[ExampleStore, DataStats]]:
  """{"train": (view, stats), "eval": (view, stats)}: a seeded `fraction` of each source's
  examples held out for eval, the rest for training; disjoint, together the whole store."""
  held = holdout_ids(store, fraction, seed)
  if held.size == 0:
    raise DataError(f"data.eval_fraction={fraction} of {len(store)} examples holds out none; "
                    "raise it, or give data.eval sources")
  keep = np.setdiff1d(np.arange(len(store), dtype=np.int64), held, assume_unique=True)
  lengths, losses = store.lengths, store.loss_counts()
  out = {}
  for name, ids, other in (("train", keep, held.size), ("eval", held, keep.size)):
    view = store.select(ids)
    st = copy.deepcopy(stats)
    st.examples, st.held_out = int(ids.size), int(other)
    st.tokens, st.loss_tokens = int(lengths[ids].sum()), int(losses[ids].sum())
    for s, entry in enumerate(st.sources):
      if s + 1 < len(view.source_bounds):
        sel = ids[view.source_bounds[s]:view.source_bounds[s + 1]]
        entry["examples"], entry["tokens"] = int(sel.size), int(lengths[sel].sum())
    out[name] = (view, st)
  return out


class _Builder:
  def __init__(self, group: int = 1):
    self.ids, self.masks, self.bounds = [], [], [0]
    self.n = 0  # examples
    self.group = group

  def add(self, *sequences: tuple[np.ndarray, np.ndarray]) -> None:
    """One example: `group` (ids, mask) sequences."""
    if len(sequences) != self.group:
      raise ValueError(f"an example has {self.group} sequences, got {len(sequences)}")
    for ids, mask in sequences:
      self.ids.append(ids)
      self.masks.append(mask.astype(np.uint8))
    self.n += 1

  def end_source(self) -> None:
    self.bounds.append(self.n)

  def build(self) -> ExampleStore:
    lengths = np.array([len(x) for x in self.ids], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    return ExampleStore(cat(self.ids, np.int32), cat(self.masks, np.uint8), offsets, tuple(self.bounds),
                        group=self.group)


class RecordError(DataError):
  """A record that fails the run (data.strict); `record` = (source, record number) orders the first
  failures of several processes like one process meets them."""

  def __init__(self, message: str, record: tuple[int, int]):
    super().__init__(message)
    self.record = record


@dataclasses.dataclass
class Share:
  """The examples of a share of the records (`load_share`; every record with `shard_count == 1`), with
  what combining the shares of several processes needs (`shares.merge`)."""
  store: ExampleStore
  stats: DataStats
  records: np.ndarray  # int64 [examples]: each example's record number in its source (0-based, all shards)
  sample_records: list  # [source, record number] of each entry of stats.samples
  file_counts: dict  # {file: [records read, examples kept]}


def _conversations(s: int, src, stats: DataStats, shard_index: int, shard_count: int, file_counts: dict,
                   convert=records.convert):
  """Yields (source, record number, where, file, convert(record, format)) of a source's records in this shard:
  messages or (ids, loss_mask) for SFT, a preference.Pair for preference data; a record that does not convert
  yields the tokenize.Dropped that says why."""
  k = -1
  split, subset = src.split, src.subset
  for file in records.expand(src.path):
    file_counts.setdefault(file, [0, 0])
    fmt = None if src.format == "auto" else src.format
    for f, n, rec in records.read_records(file, split=split, subset=subset):
      if fmt is None:
        fmt = records.detect_format(rec)
      k += 1
      if k % shard_count != shard_index:
        continue
      stats.records += 1
      file_counts[file][0] += 1
      try:
        payload = convert(rec, fmt or "auto")
      except records.MalformedRecord as e:
        payload = tokenize.dropped(e)
      yield s, k, records.where(f, n), file, payload


class _Loader:
  """Applies the outcomes of tokenized chunks, in record order, to the store being built and its stats."""

  def __init__(self, group: int, strict: bool):
    self.stats, self.builder, self.strict = DataStats(), _Builder(group), strict
    self.records: list[int] = []
    self.sample_records: list[list[int]] = []
    self.file_counts: dict = {}

  def apply(self, items: list, outcomes: list) -> None:
    stats = self.stats
    for (s, k, where, file, _), out in zip(items, outcomes):
      if isinstance(out, tokenize.Dropped):
        self._drop(s, k, where, out)
        continue
      self.builder.add(*out.sequences)
      self.records.append(k)
      self.file_counts[file][1] += 1
      stats.truncated += out.truncated
      stats.tokens += sum(len(ids) for ids, _ in out.sequences)
      stats.loss_tokens += int(sum(m.sum(dtype=np.int64) for _, m in out.sequences))
      _note_rendering(stats, where, out)

  def _drop(self, s: int, k: int, where: str, out: tokenize.Dropped) -> None:
    """Counts a record that yields no example (or fails the run in strict mode)."""
    if self.strict and (out.malformed or out.reason not in ("overlong", "truncated_no_loss_tokens")):
      what = "malformed record" if out.malformed else "example dropped"
      raise RecordError(f"{where}: {what} ({out}); data.strict is set", (s, k))
    n = len(self.stats.samples)
    self.stats.note(where, out.reason, out.detail, malformed=out.malformed)
    if len(self.stats.samples) > n:
      self.sample_records.append([s, k])

  def share(self) -> Share:
    self.stats.examples = self.builder.n
    return Share(self.builder.build(), self.stats, np.asarray(self.records, np.int64), self.sample_records,
                 self.file_counts)


def load_share(sources: Sequence, tokenizer, *, seq_len: int, mask: str = "assistant", overlong: str = "drop",
               strict: bool = False, shard_index: int = 0, shard_count: int = 1, max_examples: int | None = None,
               preference: bool = False, packing: bool = True, reasoning: str = "train", system: str = "keep",
               workers: int = 1) -> Share:
  """Reads, validates and tokenizes the records k of `sources` with k % shard_count == shard_index (k counts
  each source's records from 0), `workers` processes tokenizing (`tokenize.Pool`: 1 = this one, 0 = auto);
  the examples and stats are the same for any `workers`. No check that anything is left: `finish`."""
  if not sources:
    raise DataError("no data sources given")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
  from jaxtune.data import preference as pref
  loader = _Loader(pref.GROUP if preference else 1, strict)
  convert = (lambda rec, fmt: pref.to_pair(rec)) if preference else records.convert  # noqa: E731
  job = tokenize.Job(tokenizer, seq_len=seq_len, mask=mask, overlong=overlong, reasoning=reasoning, system=system,
                     preference=preference, packing=packing)
  if max_examples is not None:
    workers = 1  # stops after the first examples: tokenized as they are read
  stats, builder = loader.stats, loader.builder
  share = f" (share {shard_index + 1}/{shard_count})" if shard_count > 1 else ""
  t0 = time.perf_counter()
  with tokenize.Pool(job, workers) as pool, log_lib.progress(desc=f"tokenizing{share}", unit="records") as bar:

    def apply(chunks) -> None:
      for items, outcomes in chunks:
        loader.apply(items, outcomes)
        bar.update(len(items))
        bar.set_postfix(examples=f"{builder.n:,}",
                        tokens_per_s=f"{stats.tokens / max(time.perf_counter() - t0, 1e-9):,.0f}")

    for s, src in enumerate(sources):
      before = (stats.records, stats.tokens)
      pending: list = []
      for item in _conversations(s, src, stats, shard_index, shard_count, loader.file_counts, convert):
        pending.append(item)
        if len(pending) == _BATCH:
          apply(_submit(pool, pending))
          pending = []
        if max_examples is not None and builder.n + _valid(pending) >= max_examples:
          break
      apply(_submit(pool, pending))
      apply(pool.drain())
      n_before = builder.bounds[-1]
      builder.end_source()
      stats.sources.append({"path": src.path, "format": src.format, "weight": src.weight,
                            "records": stats.records - before[0], "examples": builder.n - n_before,
                            "tokens": stats.tokens - before[1]})
      if max_examples is not None and builder.n >= max_examples:
        break
  dt = time.perf_counter() - t0
  log.debug("data: tokenized %d records%s in %.1f s (%s records/s, %s tokens/s, %s)", stats.records, share, dt,
           f"{stats.records / max(dt, 1e-9):,.0f}", f"{stats.tokens / max(dt, 1e-9):,.0f}",
           f"{pool.processes} worker processes" if pool.processes else "in this process")
  return loader.share()


def _valid(pending: list) -> int:
  return sum(not isinstance(item[-1], tokenize.Dropped) for item in pending)


def _submit(pool: tokenize.Pool, items: list) -> list:
  return pool.submit([item[-1] for item in items], tag=items) if items else []


def finish(share: Share, *, check_files: bool = True, label: str = "") -> tuple[ExampleStore, DataStats]:
  """The store and stats of a share, or a DataError when a file (`check_files`) or the whole share has no
  valid example, with the drop reasons."""
  stats = share.stats
  if check_files:
    for file, (n_records, n_valid) in share.file_counts.items():
      if n_valid == 0:
        raise DataError(f"{file}: no valid example in {n_records} records ({stats.reasons()})")
  if share.stats.examples == 0:
    raise DataError(f"no valid example in {stats.records} records{label}: {stats.reasons()}")
  log.debug("data: %d records -> %d examples, %d tokens (%d trained), dropped: %s",
           stats.records, stats.examples, stats.tokens, stats.loss_tokens, stats.dropped_by_reason)
  return share.store, stats


def load_examples(sources: Sequence, tokenizer, *, seq_len: int, mask: str = "assistant",
                  overlong: str = "drop", strict: bool = False, shard_index: int = 0,
                  shard_count: int = 1, max_examples: int | None = None, preference: bool = False,
                  packing: bool = True, reasoning: str = "train",
                  system: str = "keep", workers: int = 1) -> tuple[ExampleStore, DataStats]:
  """Reads, validates and tokenizes `sources` (SourceCfg-like) into a store.

  With `preference`, records are preference pairs (jaxtune.data.preference) and each example is two
  sequences, chosen and rejected, fitted to seq_len together (`packing`: one row) or each on its own.
  `reasoning` / `system`: `data.reasoning` (train | drop) and `data.system` (keep | merge_into_first_user),
  see `messages.for_template`. `workers`: processes tokenizing (data.tokenize_workers; 1 = this one, 0 = auto).
  Raises DataError on the first bad record when `strict`; when a file (with
  one shard) or the whole split has no valid example, with the drop reasons.
  """
  share = load_share(sources, tokenizer, seq_len=seq_len, mask=mask, overlong=overlong, strict=strict,
                     shard_index=shard_index, shard_count=shard_count, max_examples=max_examples,
                     preference=preference, packing=packing, reasoning=reasoning, system=system, workers=workers)
  return finish(share, check_files=shard_count == 1 and max_examples is None,
                label=f" (shard {shard_index}/{shard_count})")


def _note_rendering(stats: DataStats, where: str, res) -> None:
  """Counts reasoning, tool calls and the messages the template lost; warns at the first lost one."""
  stats.examples_with_reasoning += res.reasoning
  stats.examples_with_tool_calls += res.tool_calls
  if res.not_rendered and not stats.messages_not_rendered:
    log.warning("data: the chat template does not render the content of some messages (roles %s at %s, for one); "
                "they are counted in data stats (messages_not_rendered)%s", sorted(set(res.not_rendered)), where,
                "; data.system=merge_into_first_user puts system messages into the first user turn"
                if "system" in res.not_rendered else "")
  for role in res.not_rendered:
    stats.messages_not_rendered[role] = stats.messages_not_rendered.get(role, 0) + 1
