"""Tokenization split across processes (jaxtune/data/shares.py): each process tokenizes its share of the records,
the merged store and stats equal one process's, and two jax.distributed processes build the batches of one."""

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxtune.config import DataCfg, SourceCfg
from jaxtune.data import shares
from jaxtune.data.examples import RecordError, finish, load_examples, load_share
from jaxtune.data.pipeline import build_pipeline
from jaxtune.errors import DataError
from tests.data.conftest import conv, write_jsonl
from tests.helpers import cli

OVERLONG = {"messages": [{"role": "user", "content": "Question long: tell"}, {"role": "assistant",
                                                                            "content": "word " * 400}]}
NO_REPLY = {"messages": [{"role": "user", "content": "Question lonely: hello?"}]}


def rows(lo, n):
  """n records: conversations of 1-3 turns, with a malformed line, an overlong one and one without reply
  every few records."""
  out = []
  for i in range(lo, lo + n):
    out.append({7: "{not json", 11: OVERLONG, 13: NO_REPLY}.get(i % 17, conv(i, turns=1 + i % 3)))
  return out


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
  """Two sources, the first of two files (records are numbered across them)."""
  d = tmp_path_factory.mktemp("split")
  write_jsonl(d / "a1.jsonl", rows(0, 30))
  write_jsonl(d / "a2.jsonl", rows(30, 23))
  write_jsonl(d / "b.jsonl", rows(100, 26))
  return [str(d / "a*.jsonl"), str(d / "b.jsonl")]


def sources(paths):
  return [SourceCfg(path=p) for p in paths]


def assert_stores_equal(a, b):
  for f in ("tokens", "mask", "offsets"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
  assert a.tokens.dtype == b.tokens.dtype and a.mask.dtype == b.mask.dtype
  assert a.source_bounds == b.source_bounds and a.group == b.group


def test_merged_shares_equal_one_process(split_data, chatml_tok):
  srcs = sources(split_data)
  store, stats = load_examples(srcs, chatml_tok, seq_len=256)
  assert stats.dropped_by_reason == {"bad_json": 4, "overlong": 4, "no_assistant": 4}  # the data has each kind
  parts = [shares.decode(shares.encode_share(load_share(srcs, chatml_tok, seq_len=256, shard_index=p, shard_count=3)))
           for p in range(3)]
  assert sum(p.stats.records for p in parts) == stats.records and all(p.stats.examples > 0 for p in parts)
  merged, merged_stats = finish(shares.merge(parts))
  assert_stores_equal(merged, store)
  assert merged_stats.to_dict() == stats.to_dict()  # the samples too: the first of each reason in record order


def test_preference_shares_merge_pairs_whole(tmp_path, llama3_tok):
  from tests.data.test_preference import pair_records
  path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(9))
  kw = dict(seq_len=256, preference=True)
  store, stats = load_examples([SourceCfg(path=path)], llama3_tok, **kw)
  parts = [load_share([SourceCfg(path=path)], llama3_tok, shard_index=p, shard_count=2, **kw) for p in range(2)]
  merged, merged_stats = finish(shares.merge(parts))
  assert_stores_equal(merged, store)
  assert merged.group == 2 and merged_stats.to_dict() == stats.to_dict()


def test_the_first_bad_record_fails_every_process(split_data, chatml_tok, monkeypatch):
  """data.strict: each process stops at the first bad record of its share; every process raises the one a
  single process meets first (record 7 of the first source, in share 1 of 2), with its message."""
  srcs = sources(split_data)
  settings = dict(seq_len=256, strict=True, shard_index=0, shard_count=1)
  with pytest.raises(DataError) as single:
    load_examples(srcs, chatml_tok, **settings)
  blobs = []
  for p in range(2):
    with pytest.raises(RecordError) as e:
      load_share(srcs, chatml_tok, **dict(settings, shard_index=p, shard_count=2))
    blobs.append(shares._encode_error(e.value))
  assert [shares.decode(b)["record"] for b in blobs] == [[0, 24], [0, 7]]
  monkeypatch.setattr(shares, "allgather_bytes", lambda own: blobs)
  for index in range(2):
    with pytest.raises(DataError) as got:
      shares.load_split(srcs, chatml_tok, settings, workers=1, index=index, count=2)
    assert str(got.value) == str(single.value) and type(got.value) in (RecordError, DataError)


def test_processes_vote_on_the_cache(tmp_path, split_data, chatml_tok, monkeypatch):
  """Every process skips tokenizing only when every one found the cache; a process that cannot compute the
  key fails them all (no process is left waiting in a collective)."""
  srcs, cache_dir = sources(split_data), str(tmp_path / "cache")
  settings = dict(seq_len=256, mask="assistant", overlong="drop", strict=False, shard_index=0, shard_count=1,
                  reasoning="train", system="keep")
  build_pipeline(DataCfg(train=tuple(srcs), seq_len=256, cache_dir=cache_dir), chatml_tok, batch_size=2, seed=0)
  votes, split = [], []

  def vote(others):
    def gather(mine):
      votes.append(mine)
      return [mine] + others
    monkeypatch.setattr(shares, "gather_ints", gather)

  monkeypatch.setattr(shares, "load_split", lambda *a, **k: split.append(k) or ("store", "stats"))
  monkeypatch.setattr(shares, "barrier", lambda name: None)
  monkeypatch.setattr("jaxtune.data.chat.encode_batch", lambda *a, **k: pytest.fail("tokenized despite the cache"))
  load = lambda: shares.load(srcs, chatml_tok, settings, cache_dir=cache_dir, workers=1, index=0, count=2)  # noqa: E731
  vote([shares._HIT])
  store, _ = load()
  assert votes == [shares._HIT] and not split and len(store) > 0
  vote([shares._MISS])  # the other host has no copy: both tokenize their shares
  assert load() == ("store", "stats") and split == [dict(workers=1, index=0, count=2)]
  vote([shares._FAILED])
  with pytest.raises(DataError, match="process 1 could not compute the key"):
    load()

  def no_key(*a, **k):
    raise DataError("cannot read the revision")
  monkeypatch.setattr(shares.cache, "cache_key", no_key)
  vote([shares._HIT])
  votes.clear()
  with pytest.raises(DataError, match="cannot read the revision"):
    load()
  assert votes == [shares._FAILED]


def test_chunk_bytes_bounds_the_collective():
  assert shares.chunk_bytes(10, 2) == shares.MIN_CHUNK_BYTES
  assert shares.chunk_bytes(3 << 20, 2) == 4 << 20
  assert shares.chunk_bytes(1 << 40, 2) == shares.MAX_CHUNK_BYTES
  assert shares.chunk_bytes(1 << 40, 64) * 64 == shares.MAX_GATHER_BYTES


def _user_contents(paths, share, shares):
  """The first user message of every record of a share (record k of each source, k % shares == share) that
  converts, in order: each must go through the chat template exactly once. Not the malformed lines, nor the
  conversations without a reply."""
  out = []
  for p in paths:
    k = -1
    for f in sorted(glob.glob(p)):
      for line in open(f):
        k += 1
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if k % shares == share and any(m["role"] == "assistant" for m in rec["messages"]):
          out.append(next(m["content"] for m in rec["messages"] if m["role"] == "user"))
  return out


def test_two_processes_tokenize_each_record_once_and_build_the_same_batches(tmp_path, split_data, tok_dirs,
                                                                            chatml_tok, monkeypatch):
  out, cache_dir = tmp_path / "out", tmp_path / "cache"
  out.mkdir()
  port = cli.free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.helpers.split_worker", str(out), tok_dirs["chatml"],
                             str(cache_dir), str(i), "2", str(port), *split_data],
                            cwd=cli.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
  got = [dict(np.load(out / f"process-{i}.npz")) for i in range(2)]
  tokenized = [json.loads(str(g.pop("tokenized"))) for g in got]
  stats = [json.loads(str(g.pop("stats"))) for g in got]

  # every record through the chat template exactly once, across both processes: each did its share
  everything = _user_contents(split_data, 0, 1)
  assert collections.Counter(tokenized[0] + tokenized[1]) == collections.Counter(everything)
  assert tokenized == [_user_contents(split_data, p, 2) for p in range(2)]

  cfg = DataCfg(train=tuple(sources(split_data)), seq_len=256, cache_dir=str(cache_dir))
  from tests.helpers.split_worker import BATCH_SIZE, BATCHES

  def batches(pipe):
    it = pipe.iterator()
    return {f"b{i}_{k}": v for i in range(BATCHES) for k, v in next(it).items()}

  one = build_pipeline(DataCfg(train=cfg.train, seq_len=256), chatml_tok, batch_size=BATCH_SIZE, seed=0)
  expect = batches(one)
  for g, s in zip(got, stats):
    assert g.keys() == expect.keys()
    for k in expect:
      np.testing.assert_array_equal(g[k], expect[k], err_msg=k)
    assert s == one.stats.to_dict()

  # the run cached the merged store under the key one process uses: a later run tokenizes nothing
  monkeypatch.setattr("jaxtune.data.chat.encode_batch", lambda *a, **k: pytest.fail("tokenized again"))
  again = build_pipeline(cfg, chatml_tok, batch_size=BATCH_SIZE, seed=0)
  assert len(list(cache_dir.glob("examples-*.npz"))) == 1
  again_batches = batches(again)
  for k in expect:
    np.testing.assert_array_equal(again_batches[k], expect[k], err_msg=k)
