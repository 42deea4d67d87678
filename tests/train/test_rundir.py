"""The run-dir layer on a local dir and on gs:// (an in-memory fake GCS behind epath's fsspec backend).

The fake is fsspec's MemoryFileSystem registered for the `gs`/`gcs` protocols, so `epath.Path("gs://...")`
takes the same code path as with gcsfs installed; like GCS it refuses to append to an object.
"""

import importlib
import os

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from jaxtune import rundir


@pytest.fixture
def gcs(monkeypatch):
  """A fresh fake GCS for gs:// paths; returns its store (object name -> file)."""

  class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for prefix in ("gs://", "gcs://"):
        path = path.removeprefix(prefix)
      return MemoryFileSystem._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
      if "a" in mode:
        raise OSError(f"GCS objects cannot be appended to: {path}")
      return super()._open(path, mode=mode, **kwargs)

  registry = importlib.import_module("fsspec.registry")._registry
  monkeypatch.setitem(registry, "gs", FakeGCS)
  monkeypatch.setitem(registry, "gcs", FakeGCS)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  yield FakeGCS.store
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()


def test_files_on_gcs(gcs):
  run = "gs://bucket/runs/a"
  assert rundir.is_remote(run) and not rundir.is_remote("/tmp/x") and not rundir.is_remote("runs/x")
  assert rundir.join(run, "hf_source", "config.json") == "gs://bucket/runs/a/hf_source/config.json"
  assert not rundir.exists(rundir.join(run, "config.json"))
  rundir.write_json(rundir.join(run, "config.json"), {"lr": 1e-4, "name": "héllo"})
  assert "/bucket/runs/a/config.json" in gcs
  assert rundir.read_json(rundir.join(run, "config.json")) == {"lr": 1e-4, "name": "héllo"}
  with pytest.raises(OSError, match="appended"):  # the fake behaves like GCS here
    epath.Path(run, "config.json").open("a")


def test_copy_tree_and_local_copy(gcs, tmp_path):
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.json").write_text('{"a": 1}')
  (src / "sub" / "b.txt").write_bytes(b"\x00\x01bytes")
  rundir.copy_tree(src, "gs://bucket/run/hf_source")
  assert sorted(gcs) == ["/bucket/run/hf_source/a.json", "/bucket/run/hf_source/sub/b.txt"]
  local = rundir.local_copy("gs://bucket/run/hf_source")
  assert os.path.isdir(local) and not rundir.is_remote(local)
  assert open(os.path.join(local, "a.json")).read() == '{"a": 1}'
  assert open(os.path.join(local, "sub", "b.txt"), "rb").read() == b"\x00\x01bytes"
  one = rundir.local_copy("gs://bucket/run/hf_source/a.json")
  assert open(one).read() == '{"a": 1}'
  assert rundir.local_copy(str(src)) == str(src)  # a local path is used as it is
  with pytest.raises(FileNotFoundError):
    rundir.local_copy("gs://bucket/run/nothing")


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_jsonl_log_appends_resumes_and_truncates(gcs, tmp_path, where):
  path = str(tmp_path / "metrics.jsonl") if where == "local" else "gs://bucket/run/metrics.jsonl"
  log = rundir.JsonlLog(path, upload_every_s=3600)
  log.append({"step": 1, "loss": 2.0})  # the first row goes out at once
  assert rundir.read_jsonl(path) == [{"step": 1, "loss": 2.0}]
  log.append({"step": 2, "loss": 1.5}, {"step": 3, "text": "a\u2028b ünï"})
  if where == "gcs":  # throttled: the object is rewritten on flush/close only
    assert len(rundir.read_jsonl(path)) == 1
  else:  # a local file is appended to at every row
    assert len(rundir.read_jsonl(path)) == 3
  log.close()
  assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2, 3]
  assert rundir.read_jsonl(path)[2]["text"] == "a\u2028b ünï"

  # a run killed mid-write, then resumed from step 2
  rundir.write_text(path, rundir.read_text(path) + '{"step": 4, "lo')
  rundir.truncate_jsonl(path, 2)
  assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2]
  log = rundir.JsonlLog(path, upload_every_s=0)
  log.append({"step": 3, "loss": 1.0})
  assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2, 3]
  log.close()
  rundir.truncate_jsonl(str(tmp_path / "missing.jsonl"), 1)  # nothing to truncate: no error


def test_tensorboard_dir_uploads_event_files(gcs, tmp_path):
  from tensorboardX import SummaryWriter

  tb = rundir.LocalDir("gs://bucket/run/tensorboard", upload_every_s=3600)
  assert os.path.isdir(tb.path) and not rundir.is_remote(tb.path)
  w = SummaryWriter(tb.path)
  w.add_scalar("train/loss", 1.0, 1)
  w.flush()
  tb.sync()  # the first sync is not throttled
  names = [k for k in gcs if k.startswith("/bucket/run/tensorboard/events.out.tfevents.")]
  assert len(names) == 1
  size = len(gcs[names[0]].getvalue())
  w.add_scalar("train/loss", 0.5, 2)
  w.flush()
  tb.sync()  # throttled: nothing sent
  assert len(gcs[names[0]].getvalue()) == size
  w.close()
  tb.close()
  local_file = os.path.join(tb.path, os.path.basename(names[0]))
  assert gcs[names[0]].getvalue() == open(local_file, "rb").read() and len(gcs[names[0]].getvalue()) > size

  local = rundir.LocalDir(str(tmp_path / "tb"))  # a local target is written in place
  assert local.path == str(tmp_path / "tb") and os.path.isdir(local.path)
  local.close()


def test_local_dir_uploads_on_success_only(gcs):
  with rundir.LocalDir("gs://bucket/run/hf_source") as d:
    with open(os.path.join(d.path, "tokenizer.json"), "w") as f:
      f.write("{}")
  assert "/bucket/run/hf_source/tokenizer.json" in gcs
  with pytest.raises(RuntimeError):
    with rundir.LocalDir("gs://bucket/run/other") as d:
      open(os.path.join(d.path, "x"), "w").close()
      raise RuntimeError("failed half-way")
  assert not any(k.startswith("/bucket/run/other") for k in gcs)


def test_export_reads_a_remote_run_dir(gcs, tmp_path):
  """export/generate's readers: config.json and hf_source/ (tokenizer loading needs a local copy)."""
  from transformers import AutoTokenizer

  from jaxtune.config import Config, default_config
  from jaxtune.export import load_run_config
  from tests.helpers.tokenizers import make_tokenizer

  cfg = Config.from_dict(default_config())
  run = "gs://bucket/runs/r"
  rundir.write_json(rundir.join(run, "config.json"), {"jaxtune_version": "0", **cfg.to_dict()})
  assert load_run_config(run) == cfg
  with pytest.raises(FileNotFoundError, match="not a jaxtune run dir"):
    load_run_config("gs://bucket/runs/none")
  _, tok = make_tokenizer(str(tmp_path), template="chatml")
  with rundir.LocalDir(rundir.join(run, "hf_source")) as d:
    tok.save_pretrained(d.path)
  loaded = AutoTokenizer.from_pretrained(rundir.local_copy(rundir.join(run, "hf_source")))
  assert loaded("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_metrics_writer_and_run_files_on_gcs(gcs, tmp_path):
  """What the training loop writes besides checkpoints, on gs://: metrics, samples, TensorBoard, config,
  hf_source; and a resume's truncation."""
  from jaxtune.config import Config, default_config
  from jaxtune.export import load_run_config
  from jaxtune.train import loop, metrics
  from tests.helpers.tokenizers import make_tokenizer

  run = "gs://bucket/run"
  w = metrics.MetricsWriter(run)
  w.write({"step": 1, "loss": 2.0})
  assert rundir.read_jsonl(rundir.join(run, "metrics.jsonl")) == [{"step": 1, "loss": 2.0}]
  assert any(k.startswith("/bucket/run/tensorboard/events") for k in gcs)
  w.write({"step": 2, "loss": 1.0})
  w.write_samples(2, [{"messages": [], "completion": "c"}], "| a |")
  w.flush()
  assert rundir.read_jsonl(rundir.join(run, "samples.jsonl")) == [{"step": 2, "messages": [], "completion": "c"}]
  w.close()
  loop._truncate_metrics(run, 1)
  w = metrics.MetricsWriter(run)
  w.write({"step": 2, "loss": 0.5})
  w.close()
  assert [r["loss"] for r in rundir.read_jsonl(rundir.join(run, "metrics.jsonl"))] == [2.0, 0.5]
  assert rundir.read_jsonl(rundir.join(run, "samples.jsonl")) == []

  c = default_config()
  c.run.dir = run
  cfg = Config.from_dict(c)
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  (model_dir / "config.json").write_text('{"model_type": "llama"}')
  _, tok = make_tokenizer(str(tmp_path), template="chatml")
  loop._write_run_files(cfg, tok, str(model_dir))
  assert load_run_config(run) == cfg
  assert rundir.read_json(rundir.join(run, "hf_source", "config.json")) == {"model_type": "llama"}
  assert rundir.exists(rundir.join(run, "hf_source", "tokenizer_config.json"))
