"""Sources beyond local JSON/Parquet files: pre-tokenized ArrayRecord, Hugging Face datasets
(save_to_disk directories, hub ids), remote paths through etils.epath."""

import importlib.util
import io
import json
import sys

import grain
import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxtune import io as jio
from jaxtune.config import SourceCfg
from jaxtune.data import cache, hf_datasets, pretokenized, records
from jaxtune.data.examples import load_examples
from jaxtune.errors import DataError
from jaxtune.data.pretokenized import write_pretokenized
from tests.data.conftest import conv, write_jsonl

ROWS = [conv(i, turns=1 + i % 2) for i in range(12)]


def examples(store):
  return [tuple(store.get(i)[0].tolist()) for i in range(len(store))]


def masks(store):
  return [tuple(store.get(i)[1].tolist()) for i in range(len(store))]


def load(path, tok, **kw):
  src = SourceCfg(path=str(path), **{k: v for k, v in kw.items() if k in ("format", "split", "subset")})
  return load_examples([src], tok, seq_len=256, **{k: v for k, v in kw.items() if k in ("mask", "strict")})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, chatml_tok):
  """The examples of ROWS read from a .jsonl file: every other source must give the same."""
  path = write_jsonl(tmp_path_factory.mktemp("ref") / "d.jsonl", ROWS)
  store, stats = load(path, chatml_tok)
  return store, stats


def test_write_pretokenized_schema(tmp_path):
  path = tmp_path / "x.array_record"
  n = write_pretokenized(path, [(np.array([5, 6, 7]), np.array([0, 1, 1])),
                                {"input_ids": [8, 9]},
                                np.array([1, 2, 3, 4], np.int64)])
  assert n == 3
  source = grain.sources.ArrayRecordDataSource([str(path)])  # Grain reads the files as they are written
  assert len(source) == 3
  first = msgpack.unpackb(source[0])
  assert first == {"input_ids": np.array([5, 6, 7], "<i4").tobytes(), "loss_mask": bytes([0, 1, 1])}
  assert "loss_mask" not in msgpack.unpackb(source[1])
  got = [pretokenized.decode(raw) for _, raw in pretokenized.read(str(path))]
  assert [g["input_ids"].tolist() for g in got] == [[5, 6, 7], [8, 9], [1, 2, 3, 4]]
  assert [g["loss_mask"].tolist() for g in got] == [[0, 1, 1], [1, 1], [1, 1, 1, 1]]
  assert all(g["input_ids"].dtype == np.int32 for g in got)


def test_pretokenized_array_record_gives_the_same_examples(tmp_path, chatml_tok, reference):
  store, stats = reference
  path = tmp_path / "train.array_record"
  write_pretokenized(path, (store.get(i) for i in range(len(store))))
  for fmt in ("auto", "pretokenized"):
    got, got_stats = load(path, chatml_tok, format=fmt)
    assert examples(got) == examples(store) and masks(got) == masks(store)
    assert (got_stats.examples, got_stats.tokens, got_stats.loss_tokens) == (stats.examples, stats.tokens,
                                                                            stats.loss_tokens)
  every, _ = load(path, chatml_tok, mask="none")  # mask "none": every token but the first is a target
  assert all(m == (0,) + (1,) * (len(m) - 1) for m in masks(every))
  # sharded file names (x.array_record-00000-of-00002) in a directory
  d = tmp_path / "shards"
  d.mkdir()
  half = len(store) // 2
  write_pretokenized(d / "t.array_record-00000-of-00002", (store.get(i) for i in range(half)))
  write_pretokenized(d / "t.array_record-00001-of-00002", (store.get(i) for i in range(half, len(store))))
  assert examples(load(d, chatml_tok)[0]) == examples(store)


def test_pretokenized_bad_records_are_counted(tmp_path, chatml_tok):
  from array_record.python.array_record_module import ArrayRecordWriter
  path = str(tmp_path / "mixed.array_record")
  npz = io.BytesIO()
  np.savez(npz, input_ids=np.array([3, 4, 5]), loss_mask=np.array([0, 1, 1]))
  vocab = len(chatml_tok)
  raw = [
      pretokenized.encode([3, 4, 5], [0, 1, 1]),  # 0 ok
      b"\x93\x01\x02",  # 1 a msgpack array, not a map
      msgpack.packb({"tokens": [1, 2]}),  # 2 no input_ids
      pretokenized.encode([3, vocab + 5], [0, 1]),  # 3 out of range
      msgpack.packb({"input_ids": [3, 4], "loss_mask": [1]}),  # 4 length mismatch
      npz.getvalue(),  # 5 npz bytes
      msgpack.packb({"input_ids": [3, 4, 5], "loss_mask": [1, 0, 0]}),  # 6 nothing trained after the first
      b"{not json",  # 7
  ]
  w = ArrayRecordWriter(path, "group_size:1")
  for r in raw:
    w.write(r)
  w.close()
  store, stats = load(path, chatml_tok)
  assert (stats.records, stats.examples, stats.malformed) == (8, 2, 5)
  assert stats.dropped_by_reason == {"bad_record": 4, "token_out_of_range": 1, "no_loss_tokens": 1}
  assert {s["where"] for s in stats.samples if s["reason"] == "token_out_of_range"} == {f"{path}[3]"}
  assert examples(store) == [(3, 4, 5), (3, 4, 5)] and masks(store) == [(0, 1, 1), (0, 1, 1)]
  with pytest.raises(DataError, match=r"mixed.array_record\[1\]"):
    load(path, chatml_tok, strict=True)


def test_array_record_of_json_conversations(tmp_path, chatml_tok, reference):
  from array_record.python.array_record_module import ArrayRecordWriter
  path = str(tmp_path / "chats.array_record")
  w = ArrayRecordWriter(path, "group_size:1")
  for r in ROWS:
    w.write(json.dumps(r).encode())
  w.close()
  assert examples(load(path, chatml_tok)[0]) == examples(reference[0])


def test_pretokenized_rows_in_json_files(tmp_path, chatml_tok):
  path = write_jsonl(tmp_path / "tok.jsonl", [{"input_ids": [3, 4, 5], "loss_mask": [0, 0, 1]},
                                              {"input_ids": [6, 7]}, {"input_ids": "abc"}])
  store, stats = load(path, chatml_tok)
  assert examples(store) == [(3, 4, 5), (6, 7)] and masks(store) == [(0, 0, 1), (0, 1)]
  assert stats.dropped_by_reason == {"bad_tokens": 1}


@pytest.fixture
def remote(monkeypatch):
  """Every path is treated as remote: read through etils.epath (its local backend here)."""
  calls = []
  real = jio.Path

  def spy(path):
    calls.append(path)
    return real(path)
  monkeypatch.setattr(jio, "is_remote", lambda path: True)
  monkeypatch.setattr(jio, "Path", spy)
  return calls


def test_remote_paths_read_through_epath(tmp_path, chatml_tok, reference, remote):
  store, _ = reference
  d = tmp_path / "bucket"
  d.mkdir()
  write_jsonl(d / "a.jsonl.gz", ROWS[:4], gz=True)
  (d / "b.json").write_text(json.dumps(ROWS[4:6]))
  pq.write_table(pa.Table.from_pylist(ROWS[6:9]), d / "c.parquet")
  write_jsonl(d / "d.jsonl", ROWS[9:])
  (d / "notes.txt").write_text("ignored")
  assert records.expand(str(d)) == [str(d / f) for f in ("a.jsonl.gz", "b.json", "c.parquet", "d.jsonl")]
  assert records.expand(f"{d}/*.json*") == [str(d / f) for f in ("a.jsonl.gz", "b.json", "d.jsonl")]
  got, _ = load(d, chatml_tok)
  assert examples(got) == examples(store)
  write_pretokenized(tmp_path / "t.array_record", (store.get(i) for i in range(len(store))))
  assert examples(load(tmp_path / "t.array_record", chatml_tok)[0]) == examples(store)
  assert cache.unit_fingerprint(str(d / "d.jsonl"))[1] == (d / "d.jsonl").stat().st_size
  assert any(str(p).endswith("c.parquet") for p in remote) and any(str(p).endswith(".array_record") for p in remote)


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs installed: would reach the network")
def test_gs_path_without_gcsfs_names_it():
  with pytest.raises(ImportError, match="gcsfs"):
    records.expand("gs://some-bucket/data/*.jsonl")


def test_hub_ids_are_recognised(tmp_path):
  assert records.expand("HuggingFaceH4/ultrachat_200k") == ["hf:HuggingFaceH4/ultrachat_200k"]
  assert records.expand("hf:squad") == ["hf:squad"]
  with pytest.raises(FileNotFoundError):
    records.expand(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError):
    records.expand("data/missing.jsonl")  # a file name, never a hub id
  assert records.kind("hf:org/x") == "hf_hub"


try:
  import datasets
except ImportError:
  datasets = None
needs_datasets = pytest.mark.skipif(datasets is None, reason="the optional 'datasets' package is not installed")


@needs_datasets
def test_save_to_disk_dataset_and_dataset_dict(tmp_path, chatml_tok, reference):
  store, _ = reference
  one = tmp_path / "one"
  datasets.Dataset.from_list(ROWS).save_to_disk(str(one))
  got, stats = load(one, chatml_tok)
  assert records.expand(str(one)) == [str(one)] and records.kind(str(one)) == "hf_disk"
  assert examples(got) == examples(store) and stats.records == len(ROWS)

  both = tmp_path / "dict"
  bad = {"messages": [{"role": "user", "content": "q"}]}
  datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:5]),
                        "test": datasets.Dataset.from_list(ROWS[5:] + [bad])}).save_to_disk(str(both))
  assert examples(load(both, chatml_tok)[0]) == examples(store)[:5]  # split "train" by default
  got, stats = load(both, chatml_tok, split="test")
  assert examples(got) == examples(store)[5:]
  assert stats.samples == [{"where": f"{both}:test[{len(ROWS) - 5}]", "reason": "no_assistant",
                            "detail": "no assistant reply to train on"}]
  with pytest.raises(ValueError, match=r"without split 'dev'.*\['test', 'train'\]"):
    load(both, chatml_tok, split="dev")
  with pytest.raises(ValueError, match="Hugging Face datasets only"):
    load(write_jsonl(tmp_path / "x.jsonl", ROWS), chatml_tok, split="test")
  # the cache key follows the dataset's own fingerprint
  key = cache.cache_key([SourceCfg(path=str(one))], chatml_tok, seq_len=256)
  assert key == cache.cache_key([SourceCfg(path=str(one))], chatml_tok, seq_len=256)
  datasets.Dataset.from_list(ROWS[:3]).save_to_disk(str(tmp_path / "three"))
  assert key != cache.cache_key([SourceCfg(path=str(tmp_path / "three"))], chatml_tok, seq_len=256)


@needs_datasets
def test_hub_dataset_through_load_dataset(monkeypatch, chatml_tok, reference):
  store, _ = reference
  calls = []

  def fake_load_dataset(name, subset=None, split=None, streaming=False):
    calls.append((name, subset, split))
    if name == "org/offline":
      raise ConnectionError("Couldn't reach 'org/offline' on the Hub (LocalEntryNotFoundError)")
    return datasets.Dataset.from_list(ROWS).to_iterable_dataset()
  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  hf_datasets._load_hub.cache_clear()
  got, _ = load("hf:org/chat", chatml_tok, split="train_sft", subset="default")
  assert examples(got) == examples(store)
  got, _ = load("org/chat", chatml_tok)
  assert examples(got) == examples(store)
  assert calls == [("org/chat", "default", "train_sft"), ("org/chat", None, "train")]
  with pytest.raises(ValueError, match="could not load the Hugging Face hub dataset 'org/offline'.*network"):
    load("org/offline", chatml_tok)
  hf_datasets._load_hub.cache_clear()


@needs_datasets
def test_hub_datasets_are_streamed_and_keyed_by_revision(monkeypatch, chatml_tok, reference):
  """A hub dataset is never loaded whole: load_dataset(streaming=True), its rows read as they arrive; the
  cache key follows the dataset repo's revision."""
  import huggingface_hub
  store, _ = reference
  read = []

  def rows():
    for i, r in enumerate(ROWS):
      read.append(i)
      yield r

  def fake_load_dataset(name, subset=None, split=None, streaming=False):
    if not streaming:
      raise AssertionError("a hub dataset must be streamed, not downloaded whole")
    return datasets.IterableDataset.from_generator(rows)
  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  hf_datasets._load_hub.cache_clear()
  got, stats = load("hf:org/stream", chatml_tok)
  assert examples(got) == examples(store) and masks(got) == masks(store) and stats.records == len(ROWS)
  assert read == list(range(len(ROWS)))

  revision = {"sha": "aaa"}
  monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info",
                      lambda self, name, **kw: type("Info", (), {"sha": revision["sha"]})())
  hf_datasets._hub_revision.cache_clear()
  key = cache.cache_key([SourceCfg(path="hf:org/stream")], chatml_tok, seq_len=256)
  assert cache.unit_fingerprint("hf:org/stream")[-1] == "aaa" and read == list(range(len(ROWS)))  # no rows read
  revision["sha"] = "bbb"
  hf_datasets._hub_revision.cache_clear()
  assert cache.cache_key([SourceCfg(path="hf:org/stream")], chatml_tok, seq_len=256) != key
  hf_datasets._load_hub.cache_clear()
  hf_datasets._hub_revision.cache_clear()


@needs_datasets
def test_real_load_dataset_offline_is_a_clear_error(monkeypatch, chatml_tok):
  import huggingface_hub.constants
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # never reach for the network in tests
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  hf_datasets._load_hub.cache_clear()
  with pytest.raises(ValueError, match="hub dataset 'jaxtune-tests/no-such-dataset'.*network access"):
    load("jaxtune-tests/no-such-dataset", chatml_tok)


def test_missing_datasets_package_names_the_extra(tmp_path, chatml_tok, monkeypatch):
  d = tmp_path / "ds"
  d.mkdir()
  for marker in hf_datasets.DISK_MARKERS:
    (d / marker).write_text("{}")
  monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
  with pytest.raises(hf_datasets.DatasetsUnavailable, match="pip install datasets"):
    load(d, chatml_tok)
  with pytest.raises(hf_datasets.DatasetsUnavailable, match="'datasets' package"):
    hf_datasets._load_hub.cache_clear()
    load("hf:org/chat", chatml_tok)
