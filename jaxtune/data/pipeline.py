"""Grain wiring: tokenized examples -> shuffled, mixed, packed, batched rows.

The stream, all of it a pure function of (data, seed, shard):

  per source:  example ids in a new seeded permutation each epoch (infinite)
  mixed:       MapDataset.mix(sources, weights)                  (exact interleaving)
  windows:     batch(K example ids) -> map(pack window)          (best fit decreasing, rows
                                                                  in a seeded order)
  rows:        FlatMapIterDataset(split rows) -> batch(batch_size)

The iterator state is two small integers (window, row in window), so
`get_state()`/`set_state()` resumes at the identical next batch.

With `data.eval_fraction` > 0 (and no `data.eval` sources) both splits read the
train sources and a seeded fraction of each source's examples is held out:
`split="eval"` gets exactly those, `split="train"` the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import sys
import zlib

import grain
import numpy as np

from jaxtune.data import cache, packing, shares
from jaxtune.data.examples import DataError, DataStats, ExampleStore, load_examples, split_holdout

log = logging.getLogger(__name__)

ROWS_PER_WINDOW = 64  # rows packed together (at least one batch)
# Names how examples become rows; a checkpoint records it, and a run resumed under another layout (it would
# see other rows from the resume point on) is refused unless checkpoint.allow_config_change.
LAYOUT = "best-fit-decreasing-v1"
MAX_EFFICIENCY_EXAMPLES = 1 << 17  # packing_efficiency is measured on at most this many


class _PackWindow:
  """Example ids -> packed rows {field: [rows, seq_len]} (picklable for workers).

  Rows are best fit decreasing within the window; their order is a permutation
  seeded by (seed, the window's ids), so longest-first packing does not put the
  long examples of a window into its first batches. A store of several sequences
  per example (preference pairs) is packed by `packing.pack_units` into `segments`
  slots per row, with `values` (set before iterating: reference log-probs) per sequence.
  """

  def __init__(self, store: ExampleStore, seq_len: int, pad_id: int, pack: bool, seed: int, segments: int = 0):
    self.store, self.seq_len, self.pad_id, self.pack, self.segments = store, seq_len, pad_id, pack, segments
    self.seed = seed
    self.values: np.ndarray | None = None

  def __call__(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    fit = functools.partial(packing.best_fit_decreasing, seed=_seed(self.seed, zlib.crc32(ids.tobytes())))
    if self.store.group == 1:
      examples = [self.store.get(int(i)) for i in ids]
      return packing.pack_rows(examples, self.seq_len, pad_id=self.pad_id, packing=self.pack, fit=fit)
    units = [self.store.unit(int(i)) for i in ids]
    return packing.pack_units(units, self.seq_len, pad_id=self.pad_id, packing=self.pack, segments=self.segments,
                              values=self.values, fit=fit)


class _SplitRows(grain.experimental.FlatMapTransform):
  max_fan_out = 1 << 20

  def flat_map(self, rows):
    return [{k: v[r] for k, v in rows.items()} for r in range(rows["segment_ids"].shape[0])]


class _PadBatch:
  """Pads a last, short batch with empty rows (segment id 0, nothing trained)."""

  def __init__(self, batch_size: int, pad_id: int):
    self.batch_size, self.pad_id = batch_size, pad_id

  FILL = {"seq_ids": -1}  # an empty row's value of each field besides input_ids (pad_id) and the zeros

  def __call__(self, batch):
    short = self.batch_size - batch["segment_ids"].shape[0]
    if short <= 0:
      return batch
    value = lambda k: self.pad_id if k == "input_ids" else self.FILL.get(k, 0)  # noqa: E731
    return {k: np.concatenate([v, np.full((short,) + v.shape[1:], value(k), v.dtype)]) for k, v in batch.items()}


@dataclasses.dataclass
class Pipeline:
  """A split's examples (this shard's) and the Grain datasets over them."""
  stats: DataStats
  store: ExampleStore
  dataset: grain.IterDataset  # infinite batches
  eval_dataset: grain.IterDataset  # each example once, in file order
  window: int  # examples packed together
  packer: _PackWindow
  batch_size: int

  @property
  def group(self) -> int:
    """Sequences per example (2 for preference pairs)."""
    return self.store.group

  def iterator(self) -> grain.DatasetIterator:
    """Infinite, checkpointable iterator of {field: [batch, ...]} (int32 token fields [batch, seq_len])."""
    return iter(self.dataset)

  def one_pass(self, units: np.ndarray | None = None) -> grain.DatasetIterator:
    """Every example of this shard exactly once (no shuffle, no weights), or only the examples `units`, in
    order; the last batch is padded with empty rows. For evaluation and reference passes."""
    if units is None:
      return iter(self.eval_dataset)
    return iter(_one_pass(grain.MapDataset.source(np.asarray(units, np.int64)), self.window, self.packer,
                          self.batch_size, _pad_id_of(self.packer)))

  def set_values(self, values: np.ndarray) -> None:
    """A float per stored sequence (reference log-probs), carried in the rows as `ref_logps`; set before
    iterating."""
    if len(values) != len(self.store.offsets) - 1:
      raise ValueError(f"{len(values)} values for {len(self.store.offsets) - 1} stored sequences")
    self.packer.values = np.asarray(values, np.float32)


def _seed(seed: int, *salt: int) -> int:
  return int(np.random.SeedSequence([seed % (1 << 63), *salt]).generate_state(1)[0])


def _pad_id_of(packer: _PackWindow) -> int:
  return packer.pad_id


def _one_pass(ids: grain.MapDataset, window: int, packer: _PackWindow, batch_size: int, pad_id: int):
  """Batches of the examples `ids` (a MapDataset of example ids) once, in order, the last one padded."""
  read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
  once = ids.batch(window).map(packer)
  once = grain.experimental.FlatMapIterDataset(once.to_iter_dataset(read), _SplitRows())
  return once.batch(batch_size).map(_PadBatch(batch_size, pad_id))


def _pad_id(tokenizer) -> int:
  for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
    if isinstance(tid, int):
      return tid
  return 0


def window_size(store: ExampleStore, seq_len: int, batch_size: int, pack: bool) -> int:
  """Examples per packing window: enough for about max(64, batch_size) rows."""
  rows = max(ROWS_PER_WINDOW, batch_size)
  if not pack:
    return rows
  mean = max(1.0, float(store.lengths.mean()))
  return int(min(1 << 16, max(1, math.ceil(rows * seq_len / mean))))


class _EpochOrder:
  """Example ids lo..hi-1, reshuffled every epoch: item k is a pure function of (seed, k).

  (Grain's index_shuffle costs milliseconds per index on small domains; one
  numpy permutation per epoch costs microseconds per example at any size.)
  """

  def __init__(self, lo: int, hi: int, seed: int):
    self.lo, self.n, self.seed = lo, hi - lo, seed
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, k: int) -> int:
    epoch, j = divmod(int(k), self.n)
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      self._perms[epoch] = perm
    return self.lo + int(perm[j])


def _stream(store: ExampleStore, weights: list[float], seed: int) -> grain.MapDataset:
  """Infinite, deterministic sequence of example ids, mixed by weight."""
  streams, kept = [], []
  for s, w in enumerate(weights):
    lo, hi = store.source_bounds[s], store.source_bounds[s + 1]
    if hi > lo:
      streams.append(grain.MapDataset.source(_EpochOrder(lo, hi, _seed(seed, s))))
      kept.append(w)
  if len(streams) == 1:
    return streams[0]
  return grain.MapDataset.mix(streams, kept)


_LAST: dict = {}  # {key: (store, stats)} of the last held-out load (train and eval splits share it)


def _examples(data_cfg, sources, tokenizer, shard_index: int, shard_count: int, reuse: bool = False,
              preference: bool = False):
  """load_examples, through the on-disk cache when data.cache_dir is set, split across the processes of a
  multi-process run (`shares.py`: each tokenizes its share, all get every example); with `reuse`, the last
  result for the same key is returned again (in this process) instead of tokenizing the same sources twice."""
  settings = dict(seq_len=data_cfg.seq_len, mask=data_cfg.mask, overlong=data_cfg.overlong,
                  strict=data_cfg.strict, shard_index=shard_index, shard_count=shard_count,
                  reasoning=data_cfg.reasoning, system=data_cfg.system)
  if preference:  # pairs are fitted to rows differently packed and unpacked
    settings.update(preference=True, packing=data_cfg.packing)
  cache_dir, workers = data_cfg.cache_dir, data_cfg.tokenize_workers
  # an explicit shard per caller: each process loads its own, nothing to combine
  index, count = shares.processes() if shard_count == 1 else (0, 1)
  if not cache_dir and not reuse and count == 1:
    return load_examples(sources, tokenizer, workers=workers, **settings)
  key = cache.cache_key(sources, tokenizer, **settings) if reuse or count == 1 else ""
  if reuse and key in _LAST:
    store, stats = _LAST[key]
    return store, copy.deepcopy(stats)
  hit = cache.load(cache_dir, key) if cache_dir and count == 1 else None
  if count > 1:
    store, stats = shares.load(sources, tokenizer, settings, cache_dir=cache_dir, workers=workers, index=index,
                               count=count)
  elif hit is not None:
    log.info("data: tokenized examples loaded from %s (key %s)", cache_dir, key)
    store, stats = hit
  else:
    store, stats = load_examples(sources, tokenizer, workers=workers, **settings)
    if cache_dir:
      cache.save(cache_dir, key, store, stats)
  if reuse:
    _LAST.clear()
    _LAST[key] = (store, copy.deepcopy(stats))
  return store, stats


def build_pipeline(data_cfg, tokenizer, *, batch_size: int, seed: int, shard_index: int = 0,
                   shard_count: int = 1, split: str = "train", preference: bool = False) -> Pipeline:
  """Reads, tokenizes and wires a split: every example (by default), or shard `shard_index` of `shard_count`.

  Records are assigned to shards round-robin before tokenization, so shards are
  disjoint and together cover the data. `batch_size` is the rows of each batch. With
  `preference` the examples are preference pairs (two sequences that stay together).
  The processes of a multi-process run share the tokenizing (`shares.py`) and all
  get the same store, hence the same batches.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"split={split!r} not in ('train', 'eval')")
  fraction = data_cfg.eval_fraction
  held_out = fraction > 0 and not data_cfg.eval
  sources = data_cfg.train if split == "train" or held_out else data_cfg.eval
  if not sources:
    raise DataError(f"no data.{split} sources configured" + (" (nor data.eval_fraction)" if split == "eval" else ""))
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  store, stats = _examples(data_cfg, sources, tokenizer, shard_index, shard_count, reuse=held_out,
                           preference=preference)
  if held_out:
    store, stats = split_holdout(store, stats, fraction, data_cfg.eval_seed)[split]
  seq_len, pack, pad_id = data_cfg.seq_len, data_cfg.packing, _pad_id(tokenizer)
  window = window_size(store, seq_len, batch_size, pack)
  order = np.random.default_rng(_seed(seed, 1 << 20)).permutation(len(store))[:MAX_EFFICIENCY_EXAMPLES]
  stats.packing_efficiency = packing.windows_efficiency(store.lengths[order], seq_len, window, pack,
                                                       fit=packing.best_fit_decreasing)
  if not pack:  # each sequence of an example (a pair's two sides) takes its own row
    stats.packing_efficiency /= store.group
  segments = packing.segment_slots(store.lengths, store.group, seq_len, pack) if store.group > 1 else 0
  packer = _PackWindow(store, seq_len, pad_id, pack, _seed(seed, 1 << 21), segments)
  read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)

  train = _stream(store, [s.weight for s in sources], seed).batch(window).map(packer)
  train = grain.experimental.FlatMapIterDataset(train.to_iter_dataset(read), _SplitRows())
  train = train.batch(batch_size, drop_remainder=True)
  if data_cfg.workers > 0:
    from absl import flags  # Grain's workers read absl flags; outside absl.app.run they are unparsed
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    train = train.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.workers))

  once = _one_pass(grain.MapDataset.range(len(store)), window, packer, batch_size, pad_id)
  return Pipeline(stats=stats, store=store, dataset=train, eval_dataset=once, window=window, packer=packer,
                  batch_size=batch_size)
