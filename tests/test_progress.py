"""Progress on the long jobs: with output to a pipe, each prints a one-line summary when it ends (bars only
on a terminal); `--quiet` prints none."""

import json

from tests.helpers.cli import jaxtune


def test_training_reports_tokenizing_loading_and_steps(tiny_run):
  out = tiny_run.stdout
  assert "tokenizing: " in out and " records (" in out and "examples=" in out, out
  assert "loading weights from " in out and "tensors=" in out and "B/s" in out, out
  assert "train: 6/6 step" in out, out


def test_export_generate_and_quiet(tiny_run, tmp_path):
  p = jaxtune("export", "--run", tiny_run.run, "--out", str(tmp_path / "hf"))
  assert "exporting to " in p.stdout and "tensors=" in p.stdout and "- done" in p.stdout, p.stdout
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"Join {w} and stone."}) + "\n" for w in ("apple", "river")))
  p = jaxtune("generate", "--model", tiny_run.run, "--prompts", str(prompts), "--max-new-tokens", "4", "--json")
  assert "generating: 2/2 prompt" in p.stdout, p.stdout
  p = jaxtune("--quiet", "export", "--run", tiny_run.run, "--out", str(tmp_path / "hf2"))
  assert "exporting" not in p.stdout and "- done" not in p.stdout, p.stdout
