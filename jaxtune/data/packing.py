"""Pure packing: (ids, loss_mask) examples -> fixed-length rows.

A row holds whole examples only (none is ever split across rows), each tagged
with a segment id 1, 2, ... in the row (0 = padding) and 0-based positions
within its segment. For example, with seq_len=6 and examples of lengths 3 and 2:

  input_ids   = [a0 a1 a2 b0 b1 P]
  segment_ids = [ 1  1  1  2  2 0]
  positions   = [ 0  1  2  0  1 0]

Unpacked mode puts one example per row, padded, with segment id 1. How examples
are grouped into rows is a `fit(lengths, seq_len) -> rows` function: `first_fit`
(arrival order; the default of `pack_rows`) or `best_fit_decreasing` (longest
first, each into the fullest row it fits; what the pipeline packs its windows
with). Both are pure functions of their input (and seed), so resume stays exact.
"""

from __future__ import annotations

import bisect
from typing import Callable, Sequence

import numpy as np

from jaxtune.data.chat import DropExample

FIELDS = ("input_ids", "loss_mask", "segment_ids", "positions")


def prepare_example(ids: np.ndarray, mask: np.ndarray, seq_len: int,
                    overlong: str = "drop") -> tuple[np.ndarray, np.ndarray, bool]:
  """Fits one example to seq_len: (ids, mask, truncated) or DropExample.

  The first token of an example is never a target (nothing in its segment
  precedes it), so `mask[t] == 1` always implies `positions[t] > 0`.
  """
  truncated = False
  if len(ids) > seq_len:
    if overlong == "drop":
      raise DropExample("overlong", f"{len(ids)} tokens > seq_len={seq_len}")
    if overlong != "truncate":
      raise ValueError(f"overlong={overlong!r} not in ('drop', 'truncate')")
    ids, mask, truncated = ids[:seq_len], mask[:seq_len], True
  mask = mask.astype(np.int32, copy=True)
  mask[:1] = 0
  if not mask.any():
    reason = "truncated_no_loss_tokens" if truncated else "no_loss_tokens"
    raise DropExample(reason, "no trained token left")
  return ids.astype(np.int32, copy=False), mask, truncated


def first_fit(lengths: Sequence[int], seq_len: int) -> list[list[int]]:
  """Groups item indices into rows of total length <= seq_len, first fit."""
  room = np.zeros(len(lengths), np.int64)
  rows: list[list[int]] = []
  for i, n in enumerate(lengths):
    if n > seq_len:
      raise ValueError(f"item {i} has length {n} > seq_len={seq_len}")
    fits = room[:len(rows)] >= n
    r = int(np.argmax(fits)) if fits.any() else len(rows)
    if r == len(rows):
      rows.append([])
      room[r] = seq_len
    rows[r].append(i)
    room[r] -= n
  return rows


def best_fit_decreasing(lengths: Sequence[int], seq_len: int, seed: int | None = None) -> list[list[int]]:
  """Groups item indices into rows of total length <= seq_len, best fit decreasing.

  Items go longest first (ties: lower index first), each into the row it leaves
  least room in (ties: the earlier row), else a new row. A row lists its items in
  index order; rows come in order of creation, or in a permutation drawn from
  `seed`. For example, lengths [3, 2, 4, 1, 2] at seq_len 5: 4 opens row 0, 3
  opens row 1, 2 fills row 1, 2 opens row 2, 1 fills row 0: [[2, 3], [0, 1], [4]].
  """
  lengths = np.asarray(lengths, np.int64)
  if lengths.size and lengths.max() > seq_len:
    i = int(np.argmax(lengths))
    raise ValueError(f"item {i} has length {int(lengths[i])} > seq_len={seq_len}")
  rooms: list[tuple[int, int]] = []  # (room left, row), sorted
  rows: list[list[int]] = []
  for i in np.argsort(-lengths, kind="stable").tolist():
    n = int(lengths[i])
    k = bisect.bisect_left(rooms, (n, -1))  # the least room that still fits n, earliest row on ties
    if k == len(rooms):
      r, room = len(rows), seq_len
      rows.append([])
    else:
      room, r = rooms.pop(k)
    rows[r].append(i)
    bisect.insort(rooms, (room - n, r))
  rows = [sorted(r) for r in rows]
  if seed is not None:
    rows = [rows[j] for j in np.random.default_rng(seed).permutation(len(rows))]
  return rows


Fit = Callable[[Sequence[int], int], list]


def pack_rows(examples: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, *,
              pad_id: int = 0, packing: bool = True, fit: Fit = first_fit) -> dict[str, np.ndarray]:
  """Examples -> {field: int32 [rows, seq_len]} for FIELDS, grouped into rows by `fit`."""
  lengths = [len(ids) for ids, _ in examples]
  if packing:
    rows = fit(lengths, seq_len)
  else:
    if lengths and max(lengths) > seq_len:
      raise ValueError(f"an example has length {max(lengths)} > seq_len={seq_len}")
    rows = [[i] for i in range(len(examples))]
  out = {k: np.zeros((len(rows), seq_len), np.int32) for k in FIELDS}
  out["input_ids"].fill(pad_id)
  for r, members in enumerate(rows):
    pos = 0
    for seg, i in enumerate(members, start=1):
      ids, mask = examples[i]
      n = len(ids)
      out["input_ids"][r, pos:pos + n] = ids
      out["loss_mask"][r, pos:pos + n] = mask
      out["segment_ids"][r, pos:pos + n] = seg
      out["positions"][r, pos:pos + n] = np.arange(n, dtype=np.int32)
      pos += n
  return out


def unpack_rows(rows: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
  """The (ids, mask) examples held in packed rows, row by row, segment by segment."""
  out = []
  for r in range(rows["segment_ids"].shape[0]):
    seg = rows["segment_ids"][r]
    for s in np.unique(seg[seg > 0]):
      sel = seg == s
      out.append((rows["input_ids"][r][sel], rows["loss_mask"][r][sel]))
  return out


def windows_efficiency(lengths: np.ndarray, seq_len: int, window: int, packing: bool = True,
                       fit: Fit = first_fit) -> float:
  """Fraction of row slots holding real tokens when packing `lengths` in windows with `fit`."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.size == 0:
    return 0.0
  if not packing:
    return float(lengths.sum() / (lengths.size * seq_len))
  n_rows = sum(len(fit(lengths[i:i + window], seq_len)) for i in range(0, lengths.size, window))
  return float(lengths.sum() / (n_rows * seq_len))


def pack_units(units: Sequence[Sequence[tuple[int, np.ndarray, np.ndarray]]], seq_len: int, *, pad_id: int = 0,
               packing: bool = True, segments: int, values: np.ndarray | None = None,
               fit: Fit = first_fit) -> dict[str, np.ndarray]:
  """Units of sequences that must stay together (a preference pair: chosen, rejected) -> rows.

  Each unit is a list of (stored sequence id, ids, mask). Packed: whole units share rows (grouped by `fit`,
  first fit by default, on the units' total lengths), each sequence its own segment, a unit's sequences in
  consecutive segments.
  Unpacked: each sequence its own row, a unit's rows consecutive. Besides FIELDS the rows carry
  `seq_ids` [rows, segments] (the stored sequence in each segment slot, -1 = empty) and, with `values`
  (a float per stored sequence), `ref_logps` [rows, segments].
  """
  lengths = [sum(len(ids) for _, ids, _ in u) for u in units]
  if packing:
    rows = [[s for i in members for s in units[i]] for members in fit(lengths, seq_len)]
  else:
    rows = [[s] for u in units for s in u]
  out = {k: np.zeros((len(rows), seq_len), np.int32) for k in FIELDS}
  out["input_ids"].fill(pad_id)
  out["seq_ids"] = np.full((len(rows), segments), -1, np.int32)
  if values is not None:
    out["ref_logps"] = np.zeros((len(rows), segments), np.float32)
  for r, members in enumerate(rows):
    if len(members) > segments:
      raise ValueError(f"row {r} holds {len(members)} sequences, more than the {segments} segment slots")
    pos = 0
    for seg, (sid, ids, mask) in enumerate(members, start=1):
      n = len(ids)
      if pos + n > seq_len:
        raise ValueError(f"a sequence of {n} tokens does not fit row {r} (seq_len={seq_len})")
      out["input_ids"][r, pos:pos + n] = ids
      out["loss_mask"][r, pos:pos + n] = mask
      out["segment_ids"][r, pos:pos + n] = seg
      out["positions"][r, pos:pos + n] = np.arange(n, dtype=np.int32)
      out["seq_ids"][r, seg - 1] = sid
      if values is not None:
        out["ref_logps"][r, seg - 1] = values[sid]
      pos += n
  return out


def segment_slots(unit_lengths: np.ndarray, group: int, seq_len: int, packing: bool) -> int:
  """Segment slots per row that any packing of these units needs: one when unpacked, else `group` per unit
  for as many of the shortest units as fit a row."""
  if not packing:
    return 1
  shortest = max(int(np.min(unit_lengths)) if len(unit_lengths) else seq_len, 1)
  return group * max(1, seq_len // shortest)
