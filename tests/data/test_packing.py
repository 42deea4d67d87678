"""The packer on hand-aligned arrays, and its invariants on random examples."""

import numpy as np
import pytest

from jaxtune.data import packing
from jaxtune.data.chat import DropExample


def ex(ids, mask):
  return np.array(ids, np.int32), np.array(mask, np.int32)


def test_pack_rows_hand_aligned():
  examples = [ex([11, 12, 13], [0, 1, 1]), ex([21, 22], [0, 1]), ex([31, 32, 33, 34], [0, 0, 1, 1])]
  rows = packing.pack_rows(examples, 6, pad_id=9)
  # first fit: 3 + 2 fill row 0 up to 5; 4 does not fit the 1 left, opens row 1.
  np.testing.assert_array_equal(rows["input_ids"], [[11, 12, 13, 21, 22, 9], [31, 32, 33, 34, 9, 9]])
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
  assert all(v.dtype == np.int32 for v in rows.values())


def test_unpacked_rows_hand_aligned():
  rows = packing.pack_rows([ex([11, 12, 13], [0, 1, 1]), ex([21, 22], [0, 1])], 4, pad_id=0, packing=False)
  np.testing.assert_array_equal(rows["input_ids"], [[11, 12, 13, 0], [21, 22, 0, 0]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 0], [0, 1, 0, 0]])


def test_first_fit_goes_back_to_earlier_rows():
  assert packing.first_fit([3, 2, 4, 1, 2], 5) == [[0, 1], [2, 3], [4]]
  assert packing.first_fit([4, 4, 1, 1], 5) == [[0, 2], [1, 3]]
  with pytest.raises(ValueError):
    packing.first_fit([6], 5)


def test_prepare_example_overlong_and_first_token():
  ids, mask, trunc = packing.prepare_example(*ex([1, 2, 3], [1, 1, 1]), seq_len=4)
  np.testing.assert_array_equal(mask, [0, 1, 1])  # nothing precedes token 0 in its segment
  assert not trunc
  with pytest.raises(DropExample) as e:
    packing.prepare_example(*ex([1, 2, 3, 4, 5], [0, 0, 0, 1, 1]), seq_len=4, overlong="drop")
  assert e.value.reason == "overlong"
  ids, mask, trunc = packing.prepare_example(*ex([1, 2, 3, 4, 5], [0, 0, 1, 1, 1]), seq_len=4, overlong="truncate")
  np.testing.assert_array_equal(ids, [1, 2, 3, 4])
  np.testing.assert_array_equal(mask, [0, 0, 1, 1])
  assert trunc
  with pytest.raises(DropExample) as e:
    packing.prepare_example(*ex([1, 2, 3, 4, 5], [0, 0, 0, 0, 1]), seq_len=4, overlong="truncate")
  assert e.value.reason == "truncated_no_loss_tokens"


def _random_examples(rng, n, seq_len):
  out = []
  for _ in range(n):
    k = int(rng.integers(1, seq_len + 1))
    out.append(ex(rng.integers(1, 100, k), rng.integers(0, 2, k)))
  return out


def test_packing_invariants_on_random_examples():
  rng = np.random.default_rng(0)
  seq_len = 32
  examples = _random_examples(rng, 200, seq_len)
  packed = packing.pack_rows(examples, seq_len, pad_id=0)
  unpacked = packing.pack_rows(examples, seq_len, pad_id=0, packing=False)
  # No example is split: every segment of a row is one whole example, found exactly once.
  key = lambda e: (tuple(e[0].tolist()), tuple(e[1].tolist()))
  got_packed = sorted(map(key, packing.unpack_rows(packed)))
  got_unpacked = sorted(map(key, packing.unpack_rows(unpacked)))
  assert got_packed == got_unpacked == sorted(map(key, examples))
  seg, pos = packed["segment_ids"], packed["positions"]
  for r in range(seg.shape[0]):
    live = seg[r] > 0
    n = int(live.sum())
    assert live[:n].all() and not live[n:].any()  # segments first, padding last
    assert (np.diff(seg[r][:n]) >= 0).all() and (np.diff(seg[r][:n]) <= 1).all() and seg[r][0] == 1
    starts = np.concatenate([[True], seg[r][1:n] != seg[r][:n - 1]])
    expect = np.arange(n) - np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    np.testing.assert_array_equal(pos[r][:n], expect)
    assert not packed["loss_mask"][r][~live].any()
  assert packed["segment_ids"].shape[0] < unpacked["segment_ids"].shape[0]


def test_windows_efficiency():
  assert packing.windows_efficiency([3, 2, 4, 1], 5, window=4) == 1.0
  assert packing.windows_efficiency([3, 2, 4, 1], 5, window=3) == 10 / 15  # rows [3 2] [4] | [1]
  assert packing.windows_efficiency([3, 2], 5, window=2, packing=False) == 0.5


def test_best_fit_decreasing_hand_aligned():
  # 4 opens row 0, 3 opens row 1, the first 2 fills row 1, the second opens row 2, 1 fills row 0.
  assert packing.best_fit_decreasing([3, 2, 4, 1, 2], 5) == [[2, 3], [0, 1], [4]]
  assert packing.first_fit([2, 2, 2, 2, 4, 4, 4, 4], 6) == [[0, 1, 2], [3, 4], [5], [6], [7]]
  assert packing.best_fit_decreasing([2, 2, 2, 2, 4, 4, 4, 4], 6) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  with pytest.raises(ValueError):
    packing.best_fit_decreasing([3, 6], 5)
  examples = [ex([11, 12, 13], [0, 1, 1]), ex([21, 22], [0, 1]), ex([31, 32, 33, 34], [0, 0, 1, 1])]
  rows = packing.pack_rows(examples, 6, pad_id=9, fit=packing.best_fit_decreasing)
  np.testing.assert_array_equal(rows["input_ids"], [[21, 22, 31, 32, 33, 34], [11, 12, 13, 9, 9, 9]])
  np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(rows["positions"], [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 0, 0]])
  np.testing.assert_array_equal(rows["loss_mask"], [[0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 0]])


def test_best_fit_decreasing_keeps_every_example_once_deterministically():
  rng = np.random.default_rng(1)
  seq_len = 64
  examples = _random_examples(rng, 300, seq_len)
  lengths = [len(e[0]) for e in examples]
  key = lambda e: (tuple(e[0].tolist()), tuple(e[1].tolist()))
  for seed in (None, 0, 7):
    fit = lambda n, s, seed=seed: packing.best_fit_decreasing(n, s, seed=seed)
    packed = packing.pack_rows(examples, seq_len, fit=fit)
    assert sorted(map(key, packing.unpack_rows(packed))) == sorted(map(key, examples))  # each exactly once
    again = packing.pack_rows(examples, seq_len, fit=fit)
    for k in packing.FIELDS:
      np.testing.assert_array_equal(packed[k], again[k])  # a pure function of the data and seed
  rows = packing.best_fit_decreasing(lengths, seq_len)
  assert all(sum(lengths[i] for i in r) <= seq_len for r in rows)
  assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
  shuffled = packing.best_fit_decreasing(lengths, seq_len, seed=3)
  assert sorted(map(tuple, shuffled)) == sorted(map(tuple, rows)) and shuffled != rows  # the seed orders rows only
  assert len(rows) < len(packing.first_fit(lengths, seq_len))
  assert packing.windows_efficiency(lengths, seq_len, 100, fit=packing.best_fit_decreasing) > \
      packing.windows_efficiency(lengths, seq_len, 100)
