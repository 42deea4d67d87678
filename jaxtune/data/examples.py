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

from jaxtune.data import chat, packing, records
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
  offsets: np.ndarray  # int64 [stored + 1]
  source_bounds: tuple[int, ...]  # example index where each source starts, + n
  index: np.ndarray | None = None  # int64 [n]: a view's stored examples; None: all, in order

  def __len__(self) -> int:
    return len(self.offsets) - 1 if self.index is None else len(self.index)

  def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    j = i if self.index is None else int(self.index[i])
    a, b = self.offsets[j], self.offsets[j + 1]
    return self.tokens[a:b], self.mask[a:b].astype(np.int32)

  @property
  def lengths(self) -> np.ndarray:
    lengths = np.diff(self.offsets)
    return lengths if self.index is None else lengths[self.index]

  def loss_counts(self) -> np.ndarray:
    """Trained tokens per example."""
    if len(self.offsets) < 2 or self.offsets[-1] == 0:
      return np.zeros(len(self), np.int64)
    per = np.add.reduceat(self.mask.astype(np.int64), self.offsets[:-1])
    per[np.diff(self.offsets) == 0] = 0
    return per if self.index is None else per[self.index]

  def select(self, stored: np.ndarray) -> "ExampleStore":
    """A view of the given stored example ids (of a full store), kept in order."""
    if self.index is not None:
      raise ValueError("select() takes a full store, not a view")
    stored = np.sort(np.asarray(stored, np.int64))
    bounds = tuple(int(b) for b in np.searchsorted(stored, self.source_bounds))
    return ExampleStore(self.tokens, self.mask, self.offsets, bounds, stored)

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
  """Yields (where, file, messages or (ids, loss_mask)) of a source's records in this shard."""
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
        yield where, file, records.convert(rec, fmt or "auto")
      except records.MalformedRecord as e:
        if strict:
          raise DataError(f"{where}: malformed record ({e}); data.strict is set") from e
        stats.note(where, e.reason, e.detail, malformed=True)


def load_examples(sources: Sequence, tokenizer, *, seq_len: int, mask: str = "assistant",
                  overlong: str = "drop", strict: bool = False, shard_index: int = 0,
                  shard_count: int = 1, max_examples: int | None = None, reasoning: str = "train",
                  system: str = "keep") -> tuple[ExampleStore, DataStats]:
  """Reads, validates and tokenizes `sources` (SourceCfg-like) into a store.

  `reasoning` / `system`: `data.reasoning` (train | drop) and `data.system`
  (keep | merge_into_first_user), see `messages.for_template`.

  Raises DataError on the first bad record when `strict`; when a file (with
  one shard) or the whole split has no valid example, with the drop reasons.
  """
  if not sources:
    raise DataError("no data sources given")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
  stats, builder, file_counts = DataStats(), _Builder(), {}
  tk = _Tokenize(tokenizer, builder, stats, file_counts, seq_len=seq_len, mask=mask, overlong=overlong,
                 strict=strict, reasoning=reasoning, system=system)
  for src in sources:
    before = (stats.records, builder.n, stats.tokens)
    pending: list = []
    for item in _conversations(src, stats, strict, shard_index, shard_count, file_counts):
      pending.append(item)
      if len(pending) == _BATCH:
        tk(pending)
        pending = []
      if max_examples is not None and builder.n + len(pending) >= max_examples:
        break
    tk(pending)
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


class _Tokenize:
  """Tokenizes batches of (where, file, conversation or pre-tokenized arrays) into the builder,
  counting drops and what the template did with the messages in the stats."""

  def __init__(self, tokenizer, builder: _Builder, stats: DataStats, file_counts: dict, *, seq_len: int,
               mask: str, overlong: str, strict: bool, reasoning: str, system: str):
    self.tokenizer, self.builder, self.stats, self.file_counts = tokenizer, builder, stats, file_counts
    self.seq_len, self.mask, self.overlong, self.strict = seq_len, mask, overlong, strict
    self.options = {"reasoning": reasoning, "system": system}
    self.vocab = len(tokenizer)
    self.warned = False

  def __call__(self, items) -> None:
    if not items:
      return
    stats = self.stats
    chats = [i for i, (_, _, x) in enumerate(items) if not isinstance(x, tuple)]
    results: list = [None] * len(items)
    encoded = chat.encode_batch([items[i][2] for i in chats], self.tokenizer, self.mask, **self.options) if chats else []
    for i, res in zip(chats, encoded):
      results[i] = res
    for (where, file, payload), res in zip(items, results):
      try:
        if isinstance(payload, tuple):
          res = chat.Encoded(*_pretokenized(*payload, vocab=self.vocab, mask=self.mask))
        if isinstance(res, chat.DropExample):
          raise res
        ids, loss_mask, truncated = packing.prepare_example(res.ids, res.loss_mask, seq_len=self.seq_len,
                                                            overlong=self.overlong)
      except records.MalformedRecord as e:
        if self.strict:
          raise DataError(f"{where}: malformed record ({e}); data.strict is set") from e
        stats.note(where, e.reason, e.detail, malformed=True)
        continue
      except chat.DropExample as e:
        if self.strict and e.reason not in ("overlong", "truncated_no_loss_tokens"):
          raise DataError(f"{where}: example dropped ({e}); data.strict is set") from e
        stats.note(where, e.reason, e.detail)
        continue
      self.builder.add(ids, loss_mask)
      self.file_counts[file][1] += 1
      stats.truncated += truncated
      stats.tokens += len(ids)
      stats.loss_tokens += int(loss_mask.sum())
      stats.examples_with_reasoning += res.reasoning
      stats.examples_with_tool_calls += res.tool_calls
      for role in res.not_rendered:
        stats.messages_not_rendered[role] = stats.messages_not_rendered.get(role, 0) + 1
      if res.not_rendered and not self.warned:
        self.warned = True
        log.warning(
            "data: the chat template does not render the content of some messages (roles %s at %s, for one); "
            "they are counted in data stats (messages_not_rendered)%s", sorted(set(res.not_rendered)), where,
            "; data.system=merge_into_first_user puts system messages into the first user turn"
            if "system" in res.not_rendered else "")
