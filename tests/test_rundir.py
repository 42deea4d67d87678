"""The run dir on a local dir and on gs:// (a fake GCS: tests/helpers/fake_gcs.py): logs that resume and
truncate, what the training loop writes besides checkpoints, and what export/generate read back."""

import pytest

from jaxtune import io, rundir


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_jsonl_log_appends_resumes_and_truncates(gcs, tmp_path, where):
  path = str(tmp_path / "metrics.jsonl") if where == "local" else "gs://bucket/run/metrics.jsonl"
  log = io.JsonlLog(path, upload_every_s=3600)
  log.append({"step": 1, "loss": 2.0})  # the first row goes out at once
  assert io.read_jsonl(path) == [{"step": 1, "loss": 2.0}]
  log.append({"step": 2, "loss": 1.5}, {"step": 3, "text": "a\u2028b ünï"})
  if where == "gcs":  # throttled: the object is rewritten on flush/close only
    assert len(io.read_jsonl(path)) == 1
  else:  # a local file is appended to at every row
    assert len(io.read_jsonl(path)) == 3
  log.close()
  assert [r["step"] for r in io.read_jsonl(path)] == [1, 2, 3]
  assert io.read_jsonl(path)[2]["text"] == "a\u2028b ünï"

  # a run killed mid-write, then resumed from step 2
  io.write_text(path, io.read_text(path) + '{"step": 4, "lo')
  rundir.truncate_jsonl(path, 2)
  assert [r["step"] for r in io.read_jsonl(path)] == [1, 2]
  log = io.JsonlLog(path, upload_every_s=0)
  log.append({"step": 3, "loss": 1.0})
  assert [r["step"] for r in io.read_jsonl(path)] == [1, 2, 3]
  log.close()
  rundir.truncate_jsonl(str(tmp_path / "missing.jsonl"), 1)  # nothing to truncate: no error


def test_export_reads_a_remote_run_dir(gcs, tmp_path):
  """export/generate's readers: config.json and hf_source/ (tokenizer loading needs a local copy)."""
  from transformers import AutoTokenizer

  from jaxtune.config import Config, default_config
  from jaxtune.export import load_run_config
  from tests.helpers.tokenizers import make_tokenizer

  cfg = Config.from_dict(default_config())
  run = "gs://bucket/runs/r"
  io.write_json(io.join(run, "config.json"), {"jaxtune_version": "0", **cfg.to_dict()})
  assert load_run_config(run) == cfg
  with pytest.raises(FileNotFoundError, match="not a jaxtune run dir"):
    load_run_config("gs://bucket/runs/none")
  _, tok = make_tokenizer(str(tmp_path), template="chatml")
  with io.LocalDir(io.join(run, "hf_source")) as d:
    tok.save_pretrained(d.path)
  loaded = AutoTokenizer.from_pretrained(io.local_copy(io.join(run, "hf_source")))
  assert loaded("hello world")["input_ids"] == tok("hello world")["input_ids"]


def test_metrics_writer_and_run_files_on_gcs(gcs, tmp_path):
  """What the training loop writes besides checkpoints, on gs://: metrics, samples, TensorBoard, config,
  hf_source; and a resume's truncation."""
  from jaxtune.config import Config, default_config
  from jaxtune.export import load_run_config
  from jaxtune.train import metrics
  from tests.helpers.tokenizers import make_tokenizer

  run = "gs://bucket/run"
  w = metrics.MetricsWriter(run)
  w.write({"step": 1, "loss": 2.0})
  assert io.read_jsonl(io.join(run, "metrics.jsonl")) == [{"step": 1, "loss": 2.0}]
  assert any(k.startswith("/bucket/run/tensorboard/events") for k in gcs)
  w.write({"step": 2, "loss": 1.0})
  w.write_samples(2, [{"messages": [], "completion": "c"}], "| a |")
  w.flush()
  assert io.read_jsonl(io.join(run, "samples.jsonl")) == [{"step": 2, "messages": [], "completion": "c"}]
  w.close()
  rundir.truncate_logs(run, 1)
  w = metrics.MetricsWriter(run)
  w.write({"step": 2, "loss": 0.5})
  w.close()
  assert [r["loss"] for r in io.read_jsonl(io.join(run, "metrics.jsonl"))] == [2.0, 0.5]
  assert io.read_jsonl(io.join(run, "samples.jsonl")) == []

  c = default_config()
  c.run.dir = run
  cfg = Config.from_dict(c)
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  (model_dir / "config.json").write_text('{"model_type": "llama"}')
  _, tok = make_tokenizer(str(tmp_path), template="chatml")
  rundir.write_config(run, cfg.to_dict(), "0")
  rundir.write_hf_source(run, str(model_dir), tok)
  assert load_run_config(run) == cfg
  assert io.read_json(io.join(run, "hf_source", "config.json")) == {"model_type": "llama"}
  assert io.exists(io.join(run, "hf_source", "tokenizer_config.json"))
