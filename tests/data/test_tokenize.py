"""Tokenizing in worker processes (jaxtune/data/tokenize.py): the examples and stats do not depend on the
number of workers."""

import numpy as np
import pytest

from jaxtune.config import SourceCfg
from jaxtune.data import examples, tokenize
from jaxtune.data.examples import load_examples
from tests.data.conftest import conv, write_jsonl
from tests.data.test_shares import assert_stores_equal
from tests.helpers.slow_chunks import first_chunk_slowest

CHUNK = 16
OVERLONG = {"messages": [{"role": "user", "content": "tell"}, {"role": "assistant", "content": "word " * 1100}]}


def rows(n, seed):
  """Conversations with malformed and dropped records; chunks of CHUNK records alternate between long and short
  conversations, so a later chunk often finishes before an earlier one."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    kind = i % 23
    if kind == 5:
      out.append("{not json")
    elif kind == 9:
      out.append(OVERLONG)
    else:
      turns = 12 if (i // CHUNK) % 2 == 0 else 1
      out.append(conv(seed * 1000 + i, turns=turns, system="Be brief." if rng.random() < 0.6 else None))
  return out


def pretokenized(n):
  """Pre-tokenized records, every 7th with a token outside the vocabulary."""
  return [{"input_ids": [5, 6, 7, 100000 if i % 7 == 3 else 8 + i % 50], "loss_mask": [0, 0, 1, 1]}
          for i in range(n)]


def test_one_and_two_workers_give_identical_examples(tmp_path, chatml_tok, monkeypatch):
  monkeypatch.setattr(examples, "_BATCH", CHUNK)  # many chunks, several in flight at once
  srcs = [SourceCfg(path=write_jsonl(tmp_path / "a.jsonl", rows(300, 1))),
          SourceCfg(path=write_jsonl(tmp_path / "b.jsonl", pretokenized(40)), weight=0.5),
          SourceCfg(path=write_jsonl(tmp_path / "c.jsonl", rows(70, 2)), weight=2.0)]
  one, one_stats = load_examples(srcs, chatml_tok, seq_len=1024, workers=1)
  assert one_stats.dropped_by_reason.keys() == {"bad_json", "overlong", "token_out_of_range"}
  assert len(one_stats.samples) == 26  # the first (up to) 10 of each reason: their order is compared below
  two, two_stats = load_examples(srcs, chatml_tok, seq_len=1024, workers=2)
  assert_stores_equal(two, one)
  assert two_stats.to_dict() == one_stats.to_dict()


def test_pool_returns_chunks_in_submission_order():
  with tokenize.Pool(job=1.0, workers=2, fn=first_chunk_slowest) as pool:
    done = [x for c in range(6) for x in pool.submit([c, c + 100], tag=c)] + pool.drain()
    assert pool.processes == 2
  assert done == [(c, [10 * c, 10 * (c + 100)]) for c in range(6)]


def test_pool_starts_workers_when_worth_it(monkeypatch):
  with tokenize.Pool(job=0.0, workers=1, fn=first_chunk_slowest) as pool:
    assert pool.submit([1, 2], tag="a") == [("a", [10, 20])] and pool.drain() == [] and pool.processes == 0
  with pytest.raises(ValueError, match="workers"):
    tokenize.Pool(job=0.0, workers=-1)
  monkeypatch.setattr(tokenize, "auto_workers", lambda: 3)
  monkeypatch.setattr(tokenize, "AUTO_AFTER_RECORDS", 4)
  pool = tokenize.Pool(job=0.0, workers=0, fn=first_chunk_slowest)
  assert pool._processes() == 0  # auto: small data stays in this process
  pool.submit([1, 2, 3, 4])
  assert pool._processes() == 3
  monkeypatch.setattr(tokenize, "auto_workers", lambda: 1)
  assert pool._processes() == 0  # one core: no pool
