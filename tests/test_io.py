"""The I/O layer on a local dir and on gs:// (a fake GCS: tests/helpers/fake_gcs.py)."""

import os

import pytest
from etils import epath

from jaxtune import io


def test_files_on_gcs(gcs):
  run = "gs://bucket/runs/a"
  assert io.is_remote(run) and not io.is_remote("/tmp/x") and not io.is_remote("runs/x")
  assert io.join(run, "hf_source", "config.json") == "gs://bucket/runs/a/hf_source/config.json"
  assert not io.exists(io.join(run, "config.json"))
  io.write_json(io.join(run, "config.json"), {"lr": 1e-4, "name": "héllo"})
  assert "/bucket/runs/a/config.json" in gcs
  assert io.read_json(io.join(run, "config.json")) == {"lr": 1e-4, "name": "héllo"}
  with pytest.raises(OSError, match="appended"):  # the fake behaves like GCS here
    epath.Path(run, "config.json").open("a")


def test_copy_tree_and_local_copy(gcs, tmp_path):
  src = tmp_path / "src"
  (src / "sub").mkdir(parents=True)
  (src / "a.json").write_text('{"a": 1}')
  (src / "sub" / "b.txt").write_bytes(b"\x00\x01bytes")
  io.copy_tree(src, "gs://bucket/run/hf_source")
  assert sorted(gcs) == ["/bucket/run/hf_source/a.json", "/bucket/run/hf_source/sub/b.txt"]
  local = io.local_copy("gs://bucket/run/hf_source")
  assert os.path.isdir(local) and not io.is_remote(local)
  assert open(os.path.join(local, "a.json")).read() == '{"a": 1}'
  assert open(os.path.join(local, "sub", "b.txt"), "rb").read() == b"\x00\x01bytes"
  one = io.local_copy("gs://bucket/run/hf_source/a.json")
  assert open(one).read() == '{"a": 1}'
  assert io.local_copy(str(src)) == str(src)  # a local path is used as it is
  with pytest.raises(FileNotFoundError):
    io.local_copy("gs://bucket/run/nothing")


def test_tensorboard_dir_uploads_event_files(gcs, tmp_path):
  from tensorboardX import SummaryWriter

  tb = io.LocalDir("gs://bucket/run/tensorboard", upload_every_s=3600)
  assert os.path.isdir(tb.path) and not io.is_remote(tb.path)
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

  local = io.LocalDir(str(tmp_path / "tb"))  # a local target is written in place
  assert local.path == str(tmp_path / "tb") and os.path.isdir(local.path)
  local.close()


def test_local_dir_uploads_on_success_only(gcs):
  with io.LocalDir("gs://bucket/run/hf_source") as d:
    with open(os.path.join(d.path, "tokenizer.json"), "w") as f:
      f.write("{}")
  assert "/bucket/run/hf_source/tokenizer.json" in gcs
  with pytest.raises(RuntimeError):
    with io.LocalDir("gs://bucket/run/other") as d:
      open(os.path.join(d.path, "x"), "w").close()
      raise RuntimeError("failed half-way")
  assert not any(k.startswith("/bucket/run/other") for k in gcs)
