"""log.wandb_project: an offline W&B run (WANDB_MODE=offline) holds the config, every metrics.jsonl scalar and
the eval-prompt samples table; a resumed run continues the same W&B run."""

import json
import os

from tests.helpers.cli import chat_records
from tests.helpers.hf_models import make_tiny_chat_model
from tests.helpers.wandb_files import offline_runs, read_run
from tests.train.test_prompt_eval import _tiny_config, _write_jsonl


def _name(key):
  return f"eval/{key}" if key.startswith("eval") else f"train/{key}"


def test_offline_wandb_run_holds_the_metrics_config_and_samples_and_resumes(tmp_path, monkeypatch):
  from jaxtune.train.loop import train
  wandb_dir = tmp_path / "wandb_dir"
  wandb_dir.mkdir()
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
  monkeypatch.setenv("WANDB_SILENT", "true")
  model_dir, _ = make_tiny_chat_model(tmp_path, "llama")
  data = _write_jsonl(tmp_path / "chat.jsonl", chat_records(16))
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": f"Join {w}."}],
                                                       "reference": w} for w in ("apple", "river")])
  run_dir = tmp_path / "run"
  kw = dict(train__log_every=1, train__eval_every=2, checkpoint__every=2, eval__prompts=prompts,
            eval__max_new_tokens=4, log__wandb_project="jaxtune-tests", log__wandb_tags="tiny, ci",
            log__wandb_run_name="tiny-run")
  train(_tiny_config(model_dir, data, run_dir, train__steps=4, **kw))
  [first] = offline_runs(str(wandb_dir))
  got = read_run(first)
  run_id = (run_dir / "wandb_run_id").read_text().strip()
  assert got["run"].run_id == run_id and got["run"].display_name == "tiny-run"
  assert list(got["run"].tags) == ["tiny", "ci"] and got["run"].project == "jaxtune-tests"
  assert got["config"]["train"]["steps"] == 4 and got["config"]["log"]["wandb_project"] == "jaxtune-tests"

  # Every numeric value of every metrics.jsonl row is in the W&B history at that row's step, unchanged.
  rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  by_step = {}
  for h in got["history"]:
    if "step" in h:
      by_step.setdefault(h["step"], {}).update(h)
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for row in rows:
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
        assert by_step[row["step"]][_name(k)] == v, (row["step"], k)
  assert "eval/eval_exact_match" in by_step[2] and "train/loss" in by_step[4]

  # The samples table of each eval point holds samples.jsonl's replies.
  samples = [json.loads(line) for line in open(run_dir / "samples.jsonl")]
  table_file = os.path.join(os.path.dirname(first), "files", by_step[4]["eval/samples/path"])
  table = json.load(open(table_file))
  assert table["columns"] == ["step", "prompt", "completion", "reference", "exact"]
  assert [r[2] for r in table["data"]] == [s["completion"] for s in samples if s["step"] == 4]
  assert [r[3] for r in table["data"]] == ["apple", "river"]

  # Resumed (from the step-4 checkpoint, 2 more steps): the same W&B run, the steps after 4.
  train(_tiny_config(model_dir, data, run_dir, train__steps=6, **kw))
  runs = offline_runs(str(wandb_dir))
  assert len(runs) == 2
  again = read_run([r for r in runs if r != first][0])
  assert again["run"].run_id == run_id
  steps = sorted({h["step"] for h in again["history"] if "step" in h})
  assert steps == [5, 6]
  last = json.loads(open(run_dir / "metrics.jsonl").read().splitlines()[-1])
  assert [h for h in again["history"] if h.get("step") == 6 and "train/loss" in h][0]["train/loss"] == last["loss"]
