"""eval.harness_tasks during training and `jaxtune eval` on a run dir (its latest checkpoint, LoRA adapters
applied), both against lm-eval's Hugging Face backend on the run's export (adapters merged)."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import harness_tasks as ht
from tests.helpers.cli import ROOT, chat_records, jaxtune, metrics
from tests.helpers.hf_models import make_tiny_chat_model


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A 4-step LoRA run scoring two local tasks at steps 2 and 4; its export."""
  tmp = tmp_path_factory.mktemp("harness_run")
  model_dir, _ = make_tiny_chat_model(tmp, "llama")
  data = tmp / "chat.jsonl"
  data.write_text("\n".join(chat_records()) + "\n")
  tasks = tmp / "tasks"
  tasks.mkdir()
  ht.write_mc_task(tasks)
  ht.write_gen_task(tasks, max_gen_toks=6)
  run = str(tmp / "run")
  p = jaxtune("train", f"--config=configs/tiny.py:{model_dir},{data}", f"--config.run.dir={run}",
              "--config.train.steps=4", "--config.train.eval_every=2", "--config.lora.rank=4",
              "--config.eval.harness_tasks=tiny_mc,tiny_gen", f"--config.eval.harness_include_path={tasks}",
              "--config.eval.harness_limit=6")
  out = str(tmp / "hf")
  jaxtune("export", "--run", run, "--out", out)
  return run, out, tasks, p.stdout, model_dir


def _hf_backend(model_dir, tasks_dir, tasks, limit):
  import lm_eval
  from lm_eval.tasks import TaskManager
  return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                                 tasks=tasks, batch_size=4, limit=limit,
                                 task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))


def test_harness_scores_at_eval_points_equal_the_hf_backend_on_the_export(lora_run):
  run, out, tasks, stdout, _ = lora_run
  rows = [r for r in metrics(run) if "eval_tiny_mc_acc" in r]
  assert [r["step"] for r in rows] == [2, 4], stdout
  assert {"eval_tiny_mc_acc_norm", "eval_tiny_gen_exact_match"} <= set(rows[-1])
  assert "eval_tiny_mc_acc" in stdout  # logged at each eval point
  ref = _hf_backend(out, tasks, ["tiny_mc", "tiny_gen"], limit=6)["results"]
  assert rows[-1]["eval_tiny_mc_acc"] == pytest.approx(ref["tiny_mc"]["acc,none"], abs=1e-9)
  assert rows[-1]["eval_tiny_mc_acc_norm"] == pytest.approx(ref["tiny_mc"]["acc_norm,none"], abs=1e-9)
  assert rows[-1]["eval_tiny_gen_exact_match"] == pytest.approx(ref["tiny_gen"]["exact_match,none"], abs=1e-9)


def test_harness_scalars_reach_tensorboard(lora_run):
  run = lora_run[0]
  tb = os.path.join(run, "tensorboard")
  names = set()
  for f in os.listdir(tb):
    names |= {k for k, _, _ in _scalars(os.path.join(tb, f))}
  assert {"eval/eval_tiny_mc_acc", "eval/eval_tiny_gen_exact_match"} <= names


def _scalars(path: str):
  """(tag, step, value) of every scalar in a TensorBoard event file."""
  import struct

  from tensorboardX.proto import event_pb2
  out = []
  with open(path, "rb") as f:
    while header := f.read(8):
      (n,) = struct.unpack("<Q", header)
      f.read(4)
      ev = event_pb2.Event()
      ev.ParseFromString(f.read(n))
      f.read(4)
      for v in ev.summary.value:
        out.append((v.tag, ev.step, v.simple_value))
  return out


def test_eval_command_on_the_run_dir_equals_the_hf_backend_on_the_export(lora_run, tmp_path):
  run, out, tasks, _, _ = lora_run
  results = tmp_path / "results.json"
  p = jaxtune("eval", "--model", run, "--tasks", "tiny_mc,tiny_gen", "--include-path", str(tasks), "--limit", "6",
              "--batch-size", "4", "--num-fewshot", "1", "--out", str(results))
  got = json.loads(results.read_text())["results"]
  assert "tiny_mc" in p.stdout and "acc_norm" in p.stdout  # lm-eval's table
  import lm_eval
  from lm_eval.tasks import TaskManager
  ref = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={out},dtype=float32", device="cpu",
                                tasks=["tiny_mc", "tiny_gen"], batch_size=4, limit=6, num_fewshot=1,
                                task_manager=TaskManager(include_path=str(tasks), include_defaults=False))["results"]
  for task, metric in (("tiny_mc", "acc,none"), ("tiny_mc", "acc_norm,none"), ("tiny_gen", "exact_match,none")):
    assert got[task][metric] == pytest.approx(ref[task][metric], abs=1e-9), (task, metric)
  assert json.loads(results.read_text())["n-shot"]["tiny_mc"] == 1


def test_eval_command_errors_name_the_task_and_the_path(lora_run, tmp_path):
  from jaxtune import cli
  run, _, tasks, _, model_dir = lora_run

  def error(*argv):
    with pytest.raises(SystemExit) as e:
      cli.main(list(argv))
    return str(e.value.code)

  msg = error("eval", "--model", run, "--tasks", "tiny_mcq", "--include-path", str(tasks))
  assert msg.startswith("error: unknown lm-eval task(s) ['tiny_mcq']") and "'tiny_mc'" in msg, msg
  msg = error("eval", "--model", run, "--tasks", "tiny_mc", "--include-path", "/no/such/dir")
  assert msg.startswith("error: ") and "/no/such/dir" in msg, msg
  data = tmp_path / "x.jsonl"  # pre-flight checks the data sources first: an existing file gets to the tasks
  data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
  msg = error("train", f"--config=configs/tiny.py:{model_dir},{data}", "--config.eval.harness_tasks=tiny_mc,nope",
              f"--config.eval.harness_include_path={tasks}", f"--config.run.dir={os.path.join(ROOT, 'runs', 'never')}")
  assert msg.startswith("error: unknown lm-eval task(s) ['nope']"), msg
  assert not os.path.exists(os.path.join(ROOT, "runs", "never"))
