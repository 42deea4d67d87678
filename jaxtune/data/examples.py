"""Sources -> one compact in-memory store of tokenized examples, with exact stats.

Everything is read and tokenized up front (records of this process's shard
only): the store is three flat numpy arrays, the stats are exact, and Grain
then only shuffles, mixes, packs and batches integers and slices. Pre-tokenized
records (`input_ids`, `loss_mask`) skip the chat template but are checked and
fitted to seq_len like the others.

`split_holdout` carves a seeded held-out eval set out of a store
(`data.eval_fraction`); both parts are views sharing the store's arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Sequence

import numpy as np

from jaxtune import log as log_lib
from jaxtune.data import chat, packing, records
from jaxtune.data import packing as packing_lib
from jaxtune.errors import DataError  # noqa: F401 - raised here, defined with the other user errors

log = logging.getLogger(__name__)
_BATCH = 256  # conversations per tokenizer call
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


def _conversations(src, stats: DataStats, strict: bool, shard_index: int, shard_count: int,
                   file_counts: dict, convert=records.convert):
  """Yields (where, file, convert(record, format)) of a source's records in this shard: messages or
  (ids, loss_mask) for SFT, a preference.Pair for preference data."""
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
      where = records.where(f, n)
      try:
        yield where, file, convert(rec, fmt or "auto")
      except records.MalformedRecord as e:
        if strict:
          raise DataError(f"{where}: malformed record ({e}); data.strict is set") from e
        stats.note(where, e.reason, e.detail, malformed=True)


def load_examples(sources: Sequence, tokenizer, *, seq_len: int, mask: str = "assistant",
                  overlong: str = "drop", strict: bool = False, shard_index: int = 0,
                  shard_count: int = 1, max_examples: int | None = None, preference: bool = False,
                  packing: bool = True, reasoning: str = "train",
                  system: str = "keep") -> tuple[ExampleStore, DataStats]:
  """Reads, validates and tokenizes `sources` (SourceCfg-like) into a store.

  With `preference`, records are preference pairs (jaxtune.data.preference) and each example is two
  sequences, chosen and rejected, fitted to seq_len together (`packing`: one row) or each on its own.
  `reasoning` / `system`: `data.reasoning` (train | drop) and `data.system` (keep | merge_into_first_user),
  see `messages.for_template`.
  Raises DataError on the first bad record when `strict`; when a file (with
  one shard) or the whole split has no valid example, with the drop reasons.
  """
  if not sources:
    raise DataError("no data sources given")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
  from jaxtune.data import preference as pref
  stats, builder, file_counts = DataStats(), _Builder(pref.GROUP if preference else 1), {}
  vocab = len(tokenizer)
  if preference:
    convert = lambda rec, fmt: pref.to_pair(rec)  # noqa: E731
    tokenize = lambda items: _tokenize_pairs(items, tokenizer, builder, stats, file_counts, seq_len, packing,  # noqa: E731
                                             overlong, strict)
  else:
    convert = records.convert
    tokenize = lambda items: _tokenize(items, tokenizer, builder, stats, file_counts, seq_len, mask,  # noqa: E731
                                       overlong, strict, vocab, reasoning=reasoning, system=system)
  bar = log_lib.progress(desc="tokenizing", unit="rec")

  def flush(pending: list) -> None:
    tokenize(pending)
    bar.update(stats.records - bar.n)
    bar.set_postfix(examples=f"{builder.n:,}", tokens=f"{stats.tokens:,}")

  for src in sources:
    before = (stats.records, builder.n, stats.tokens)
    pending: list = []
    for item in _conversations(src, stats, strict, shard_index, shard_count, file_counts, convert):
      pending.append(item)
      if len(pending) == _BATCH:
        flush(pending)
        pending = []
      if max_examples is not None and builder.n + len(pending) >= max_examples:
        break
    flush(pending)
    builder.end_source()
    stats.sources.append({"path": src.path, "format": src.format, "weight": src.weight,
                          "records": stats.records - before[0], "examples": builder.n - before[1],
                          "tokens": stats.tokens - before[2]})
    if max_examples is not None and builder.n >= max_examples:
      break
  bar.close()
  if shard_count == 1 and max_examples is None:
    for file, (n_records, n_valid) in file_counts.items():
      if n_valid == 0:
        raise DataError(f"{file}: no valid example in {n_records} records ({stats.reasons()})")
  if builder.n == 0:
    raise DataError(f"no valid example in {stats.records} records (shard {shard_index}/{shard_count}): "
                    f"{stats.reasons()}")
  stats.examples = builder.n
  log.info("data: %d records -> %d examples, %d tokens (%d trained), dropped: %s",
           stats.records, stats.examples, stats.tokens, stats.loss_tokens, stats.dropped_by_reason)
  return builder.build(), stats


def _pretokenized(ids: np.ndarray, loss_mask: np.ndarray, vocab: int, mask: str):
  """A pre-tokenized example checked against the tokenizer; mask "none" trains every token."""
  if ids.size == 0:
    raise chat.DropExample("empty", "no input_ids")
  bad = (ids < 0) | (ids >= vocab)
  if bad.any():
    raise records.MalformedRecord("token_out_of_range",
                                  f"token id {int(ids[bad][0])} is outside the tokenizer's {vocab} ids")
  return ids, (np.ones_like(loss_mask) if mask == "none" else loss_mask)


def _tokenize(items, tokenizer, builder: _Builder, stats: DataStats, file_counts: dict,
              seq_len: int, mask: str, overlong: str, strict: bool, vocab: int, *, reasoning: str,
              system: str) -> None:
  if not items:
    return
  chats = [i for i, (_, _, x) in enumerate(items) if not isinstance(x, tuple)]
  results: list = [None] * len(items)
  encoded = chat.encode_batch([items[i][2] for i in chats], tokenizer, mask, reasoning=reasoning,
                              system=system) if chats else []
  for i, res in zip(chats, encoded):
    results[i] = res
  for (where, file, payload), res in zip(items, results):
    try:
      if isinstance(payload, tuple):
        res = chat.Encoded(*_pretokenized(*payload, vocab=vocab, mask=mask))
      if isinstance(res, chat.DropExample):
        raise res
      ids, loss_mask, truncated = packing.prepare_example(res.ids, res.loss_mask, seq_len=seq_len,
                                                          overlong=overlong)
    except (records.MalformedRecord, chat.DropExample) as e:
      _note_drop(stats, where, e, strict)
      continue
    builder.add((ids, loss_mask))
    file_counts[file][1] += 1
    stats.truncated += truncated
    stats.tokens += len(ids)
    stats.loss_tokens += int(loss_mask.sum())
    _note_rendering(stats, where, res)


def _note_rendering(stats: DataStats, where: str, res: chat.Encoded) -> None:
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


def _note_drop(stats: DataStats, where: str, e: Exception, strict: bool) -> None:
  """Counts a record that yields no example (or fails the run in strict mode)."""
  if isinstance(e, records.MalformedRecord):
    if strict:
      raise DataError(f"{where}: malformed record ({e}); data.strict is set") from e
    stats.note(where, e.reason, e.detail, malformed=True)
    return
  if strict and e.reason not in ("overlong", "truncated_no_loss_tokens"):
    raise DataError(f"{where}: example dropped ({e}); data.strict is set") from e
  stats.note(where, e.reason, e.detail)


def _tokenize_pairs(items, tokenizer, builder: _Builder, stats: DataStats, file_counts: dict, seq_len: int,
                    packing: bool, overlong: str, strict: bool) -> None:
  from jaxtune.data import preference as pref
  if not items:
    return
  for (where, file, _), res in zip(items, pref.encode_pairs([p for _, _, p in items], tokenizer)):
    try:
      if isinstance(res, chat.DropExample):
        raise res
      c_ids, c_mask, r_ids, r_mask, truncated = pref.fit_pair(*res, seq_len=seq_len, packed=packing,
                                                               overlong=overlong)
      sides = []
      for ids, mask in ((c_ids, c_mask), (r_ids, r_mask)):
        ids, mask, _ = packing_lib.prepare_example(ids, mask, seq_len=seq_len, overlong="drop")
        sides.append((ids, mask))
    except (records.MalformedRecord, chat.DropExample) as e:
      _note_drop(stats, where, e, strict)
      continue
    builder.add(*sides)
    file_counts[file][1] += 1
    stats.truncated += truncated
    stats.tokens += sum(len(ids) for ids, _ in sides)
    stats.loss_tokens += int(sum(m.sum() for _, m in sides))
