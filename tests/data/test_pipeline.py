"""The Grain pipeline: stats, bad records, file types, resume, shards, order, mixing."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxtune.config import DataCfg, SourceCfg
from jaxtune.data import packing
from jaxtune.data.examples import load_examples
from jaxtune.errors import DataError
from jaxtune.data.pipeline import build_pipeline
from tests.data.conftest import conv, write_jsonl


def cfg(*sources, **kw):
  srcs = tuple(s if isinstance(s, SourceCfg) else SourceCfg(path=s) for s in sources)
  return DataCfg(train=srcs, **{"seq_len": 256, **kw})


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def examples_of(batch):
  """(ids tuple) of every segment in a batch."""
  out = []
  for ids, seg in zip(batch["input_ids"], batch["segment_ids"]):
    for s in np.unique(seg[seg > 0]):
      out.append(tuple(ids[seg == s].tolist()))
  return out


def store_examples(store):
  return [tuple(store.get(i)[0].tolist()) for i in range(len(store))]


@pytest.fixture(scope="module")
def data40(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("d40")
  return write_jsonl(tmp / "d.jsonl", [conv(i, turns=1 + i % 3, system="Be brief." if i % 2 else None)
                                       for i in range(40)])


def test_malformed_records_counted_with_file_line(tmp_path, chatml_tok):
  good = [conv(i) for i in range(6)]
  rows = [good[0], good[1], "{not json", good[2],
          {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},
          good[3],
          {"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]},
          {"messages": [{"role": "user", "content": "only a question"}]},
          good[4], "", good[5]]
  path = write_jsonl(tmp_path / "bad.jsonl", rows)
  s = build_pipeline(cfg(path), chatml_tok, batch_size=2, seed=0).stats.to_dict()
  assert (s["records"], s["malformed"], s["dropped"], s["examples"]) == (10, 4, 4, 6)
  assert s["dropped_by_reason"] == {"bad_json": 1, "missing_content": 1, "unknown_role": 1, "no_assistant": 1}
  assert sorted((x["where"], x["reason"]) for x in s["samples"]) == [
      (f"{path}:3", "bad_json"), (f"{path}:5", "missing_content"),
      (f"{path}:7", "unknown_role"), (f"{path}:8", "no_assistant")]
  with pytest.raises(DataError, match=f"{path}:3"):
    build_pipeline(cfg(path, strict=True), chatml_tok, batch_size=2, seed=0)


def test_overlong_drop_and_truncate_are_counted(tmp_path, chatml_tok):
  long = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 300}]}
  long_prompt = {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}
  path = write_jsonl(tmp_path / "d.jsonl", [conv(0), long, long_prompt, conv(1)])
  s = build_pipeline(cfg(path), chatml_tok, batch_size=1, seed=0).stats
  assert s.dropped_by_reason == {"overlong": 2} and (s.examples, s.dropped, s.malformed) == (2, 2, 0)
  s = build_pipeline(cfg(path, overlong="truncate"), chatml_tok, batch_size=1, seed=0).stats
  assert s.dropped_by_reason == {"truncated_no_loss_tokens": 1} and s.examples == 3 and s.truncated == 1


def test_no_valid_example_is_an_error(tmp_path, chatml_tok):
  bad = write_jsonl(tmp_path / "bad.jsonl", ["{x", {"messages": [{"role": "user", "content": "q"}]}])
  good = write_jsonl(tmp_path / "good.jsonl", [conv(0)])
  with pytest.raises(DataError, match="bad.jsonl: no valid example in 2 records.*no_assistant"):
    build_pipeline(cfg(good, bad), chatml_tok, batch_size=1, seed=0)
  with pytest.raises(DataError, match="no valid example.*bad_json"):
    build_pipeline(cfg(bad), chatml_tok, batch_size=1, seed=0)


def test_formats_and_file_types_give_the_same_examples(tmp_path, llama3_tok):
  qa = [(f"Question {i}?", f"Answer {i}.") for i in range(5)]
  msgs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in qa]
  files = {
      "messages": write_jsonl(tmp_path / "m.jsonl", msgs),
      "sharegpt": write_jsonl(tmp_path / "s.jsonl.gz", [
          {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in qa], gz=True),
      "alpaca": str(tmp_path / "a.json"),
      "prompt_completion": str(tmp_path / "p.parquet"),
  }
  (tmp_path / "a.json").write_text(json.dumps([{"instruction": q, "input": "", "output": a} for q, a in qa]))
  pq.write_table(pa.Table.from_pylist([{"prompt": q, "completion": a} for q, a in qa]), files["prompt_completion"])
  expect = None
  for fmt, path in files.items():
    for f in (fmt, "auto"):
      store, stats = load_examples([SourceCfg(path=path, format=f)], llama3_tok, seq_len=128)
      assert stats.examples == 5, (fmt, f)
      expect = expect or store_examples(store)
      assert store_examples(store) == expect, (fmt, f)


@pytest.mark.parametrize("packing", [True, False])
def test_state_restore_gives_identical_next_batches(data40, chatml_tok, packing):
  c = cfg(data40, packing=packing)
  it = build_pipeline(c, chatml_tok, batch_size=3, seed=7).iterator()
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
  expected = take(it, 6)
  fresh = build_pipeline(c, chatml_tok, batch_size=3, seed=7).iterator()
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 6), expected)


def test_batches_are_int32_and_well_formed(data40, chatml_tok):
  p = build_pipeline(cfg(data40), chatml_tok, batch_size=4, seed=0)
  b = next(p.iterator())
  assert set(b) == {"input_ids", "loss_mask", "segment_ids", "positions"}
  assert all(v.shape == (4, 256) and v.dtype == np.int32 for v in b.values())
  assert (b["loss_mask"] <= (b["segment_ids"] > 0)).all() and not b["loss_mask"][b["positions"] == 0].any()
  assert 0.5 < p.stats.packing_efficiency <= 1.0


def test_order_is_deterministic_from_seed(data40, chatml_tok):
  a = take(build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=1).iterator(), 4)
  assert_batches_equal(a, take(build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=1).iterator(), 4))
  b = take(build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=2).iterator(), 4)
  assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))


def test_each_epoch_sees_every_example_once_reshuffled(data40, chatml_tok):
  p = build_pipeline(cfg(data40, packing=False), chatml_tok, batch_size=5, seed=0)
  seen = [e for b in take(p.iterator(), 16) for e in examples_of(b)]  # 2 epochs of 40
  everything = sorted(store_examples(p.store))
  assert sorted(seen[:40]) == everything and sorted(seen[40:]) == everything
  assert seen[:40] != seen[40:]


def test_shards_are_disjoint_and_cover_the_data(data40, chatml_tok):
  full = build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=0)
  shards = [build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=0, shard_index=i, shard_count=2)
            for i in range(2)]
  parts = [{e for b in s.one_pass() for e in examples_of(b)} for s in shards]
  assert parts[0] and parts[1] and not parts[0] & parts[1]
  assert parts[0] | parts[1] == set(store_examples(full.store))
  assert sum(s.stats.records for s in shards) == full.stats.records == 40
  assert not parts[0] & {e for b in take(shards[1].iterator(), 10) for e in examples_of(b)}


def test_one_pass_covers_each_example_once_and_matches_stats(data40, chatml_tok):
  p = build_pipeline(cfg(data40), chatml_tok, batch_size=3, seed=0)
  batches = list(p.one_pass())
  assert all(b["input_ids"].shape == (3, 256) for b in batches)
  assert sorted(e for b in batches for e in examples_of(b)) == sorted(store_examples(p.store))
  assert sum(int(b["loss_mask"].sum()) for b in batches) == p.stats.loss_tokens
  assert sum(int((b["segment_ids"] > 0).sum()) for b in batches) == p.stats.tokens


def test_weighted_mixing_proportions(tmp_path, chatml_tok):
  a = write_jsonl(tmp_path / "a.jsonl", [conv(i) for i in range(30)])
  b = write_jsonl(tmp_path / "b.jsonl", [conv(100 + i, system="Source B.") for i in range(7)])
  c = cfg(SourceCfg(path=a, weight=3.0), SourceCfg(path=b, weight=1.0), packing=False)
  p = build_pipeline(c, chatml_tok, batch_size=16, seed=0)
  lo, mid, hi = p.store.source_bounds
  source = {tuple(p.store.get(i)[0].tolist()): int(i >= mid) for i in range(lo, hi)}
  got = [source[e] for bt in take(p.iterator(), 50) for e in examples_of(bt)]
  frac_b = sum(got) / len(got)
  assert len(got) == 800 and abs(frac_b - 0.25) < 0.02, frac_b


def test_cache_dir_reuses_tokenized_examples(tmp_path, data40, chatml_tok, monkeypatch):
  c = cfg(data40, cache_dir=str(tmp_path / "cache"))
  first = build_pipeline(c, chatml_tok, batch_size=2, seed=0)
  assert len(list((tmp_path / "cache").glob("examples-*.npz"))) == 1

  def boom(*a, **k):
    raise AssertionError("tokenized again despite the cache")
  monkeypatch.setattr("jaxtune.data.chat.encode_batch", boom)
  again = build_pipeline(c, chatml_tok, batch_size=2, seed=0)
  assert again.stats.to_dict() == first.stats.to_dict()
  assert_batches_equal(take(again.iterator(), 3), take(first.iterator(), 3))
  with pytest.raises(AssertionError, match="tokenized again"):  # other settings: another key
    build_pipeline(cfg(data40, cache_dir=str(tmp_path / "cache"), seq_len=300), chatml_tok, batch_size=2, seed=0)


def test_worker_processes_resume_identically(data40, chatml_tok):
  p = build_pipeline(cfg(data40, workers=2), chatml_tok, batch_size=2, seed=0)
  it = p.iterator()
  take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 4)
  again = p.iterator()
  again.set_state(state)
  assert_batches_equal(take(again, 4), expected)
  full = {e for b in p.one_pass() for e in examples_of(b)}
  assert {e for b in expected for e in examples_of(b)} <= full


def held_out_split(c, tok, seed=0):
  return {s: build_pipeline(c, tok, batch_size=2, seed=seed, split=s) for s in ("train", "eval")}


def test_eval_fraction_holds_out_a_seeded_disjoint_part(data40, chatml_tok):
  full = set(store_examples(build_pipeline(cfg(data40), chatml_tok, batch_size=2, seed=0).store))
  p = held_out_split(cfg(data40, eval_fraction=0.25), chatml_tok)
  train, ev = (store_examples(p[s].store) for s in ("train", "eval"))
  assert len(ev) == 10 and len(train) == 30  # round(0.25 * 40)
  assert not set(train) & set(ev) and set(train) | set(ev) == full
  for s, other in (("train", 10), ("eval", 30)):
    st = p[s].stats
    assert st.examples == len(p[s].store) and st.held_out == other and st.records == st.examples + other + st.dropped
    assert st.tokens == int(p[s].store.lengths.sum()) and st.sources[0]["examples"] == st.examples
  assert sorted(e for b in p["eval"].one_pass() for e in examples_of(b)) == sorted(ev)
  assert sum(int(b["loss_mask"].sum()) for b in p["eval"].one_pass()) == p["eval"].stats.loss_tokens
  assert not {e for b in take(p["train"].iterator(), 30) for e in examples_of(b)} & set(ev)  # 2+ epochs
  # deterministic, independent of train.seed; data.eval_seed picks another part
  again = held_out_split(cfg(data40, eval_fraction=0.25), chatml_tok, seed=5)
  assert store_examples(again["eval"].store) == ev
  other = held_out_split(cfg(data40, eval_fraction=0.25, eval_seed=1), chatml_tok)
  assert len(other["eval"].store) == 10 and set(store_examples(other["eval"].store)) != set(ev)


def test_eval_fraction_per_source_and_tokenized_once(tmp_path, chatml_tok, monkeypatch):
  a = write_jsonl(tmp_path / "a.jsonl", [conv(i) for i in range(30)])
  b = write_jsonl(tmp_path / "b.jsonl", [conv(100 + i, system="Source B.") for i in range(7)])
  one = write_jsonl(tmp_path / "one.jsonl", [conv(200)])
  c = cfg(SourceCfg(path=a, weight=3.0), SourceCfg(path=b), SourceCfg(path=one), eval_fraction=0.2)
  train = build_pipeline(c, chatml_tok, batch_size=2, seed=0)

  def boom(*args, **kw):
    raise AssertionError("tokenized again for the eval split")
  monkeypatch.setattr("jaxtune.data.chat.encode_batch", boom)
  ev = build_pipeline(c, chatml_tok, batch_size=2, seed=0, split="eval")
  assert [s["examples"] for s in ev.stats.sources] == [6, 1, 0]  # round(0.2 n), never a source's last one
  assert [s["examples"] for s in train.stats.sources] == [24, 6, 1]
  assert ev.store.source_bounds == (0, 6, 7, 7) and train.store.source_bounds == (0, 24, 30, 31)
  assert sorted(e for bt in ev.one_pass() for e in examples_of(bt)) == sorted(store_examples(ev.store))
  assert {e for bt in take(ev.iterator(), 3) for e in examples_of(bt)} <= set(store_examples(ev.store))


def test_eval_fraction_config_checks():
  from jaxtune.config import Config, ConfigError, default_config
  c = default_config()
  c.model.path = "m"
  c.data.train = ({"path": "t.jsonl"},)
  c.train.eval_every = 10
  with pytest.raises(ConfigError, match="eval_every"):
    Config.from_dict(c)
  c.data.eval_fraction = 0.05
  assert Config.from_dict(c).data.eval_fraction == 0.05
  c.data.eval = ({"path": "e.jsonl"},)
  with pytest.raises(ConfigError, match="one or the other"):
    Config.from_dict(c)
  with pytest.raises(ConfigError, match="eval_fraction"):
    DataCfg(train=(SourceCfg(path="t.jsonl"),), eval_fraction=1.0)


def test_short_examples_pack_best_fit_decreasing(tmp_path, chatml_tok):
  # A few hundred short examples at seq 256: first fit in arrival order leaves rows a seventh empty.
  rng = np.random.default_rng(0)
  words = "the answer is forty two because six times seven".split()
  rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                        {"role": "assistant", "content": " ".join(rng.choice(words, int(rng.integers(3, 60))))}]}
          for i in range(300)]
  p = build_pipeline(cfg(write_jsonl(tmp_path / "d.jsonl", rows)), chatml_tok, batch_size=8, seed=0)
  lengths = p.store.lengths
  first_fit = [packing.windows_efficiency(lengths[np.random.default_rng(s).permutation(len(lengths))], 256, p.window)
               for s in range(4)]
  assert max(first_fit) < 0.91 and p.stats.packing_efficiency >= 0.92
  # One pass (windows in file order) holds every example once, in the rows best fit decreasing makes.
  batches = list(p.one_pass())
  assert sorted(e for b in batches for e in examples_of(b)) == sorted(store_examples(p.store))
  used_rows = sum(int((b["segment_ids"] > 0).any(axis=1).sum()) for b in batches)
  windows = [lengths[i:i + p.window] for i in range(0, len(lengths), p.window)]
  assert used_rows == sum(len(packing.best_fit_decreasing(w, 256)) for w in windows)
  assert used_rows < sum(len(packing.first_fit(w, 256)) for w in windows)
  assert int(lengths.sum()) / (used_rows * 256) >= 0.9
