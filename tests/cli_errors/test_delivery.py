"""Issue 18, class 3: problems that can be seen before any data or weights are read are reported then, as one
line, quickly (`jaxtune.train.preflight`), and errors with good text arrive as that text, not a traceback.

Each case checks the error line, that the data was not tokenized (no `data:` line) and that the run dir holds
nothing but what the checks themselves needed; the time each case took is printed (-s) to keep an eye on it.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.cli import ROOT, assert_error, run_main


def _cases(tiny_run, tmp):
  (tmp / "a_file").write_text("x")
  (tmp / "ckpt_file").mkdir()
  (tmp / "ckpt_file" / "checkpoints").write_text("x")
  (tmp / "data.csv").write_text("a,b\n")
  cfg = tiny_run.config
  return {  # name -> (argv, what the error names)
      "micro-batch vs mesh": ([cfg, "--config.mesh.data=8", "--config.train.batch_size=4"],
                              ["'train.batch_size'", "micro-batch 4", "mesh.data * mesh.fsdp = 8"]),
      "grad accumulation vs mesh": ([cfg, "--config.mesh.data=4", "--config.train.batch_size=8",
                                     "--config.train.grad_accum=4"], ["micro-batch 2", "= 4"]),
      "mesh larger than the devices": ([cfg, "--config.mesh.data=16"], ["'mesh'", "needs 16 devices", "has 8"]),
      "mesh -1 does not divide": ([cfg, "--config.mesh.data=-1", "--config.mesh.tensor=3"],
                                  ["'mesh'", "not divisible by 3"]),
      "two -1 mesh axes": ([cfg, "--config.mesh.data=-1", "--config.mesh.fsdp=-1"], ["at most one"]),
      "LoRA target": ([cfg, "--config.lora.rank=4", "--config.lora.targets=('q','qkv')"],
                      ["'lora.targets'", "unknown: ['qkv']"]),
      "attention kernel not on this platform": ([cfg, "--config.model.attention=cudnn"],
                                               ["'model.attention'", "needs a GPU"]),
      "run dir is a file": ([cfg, f"--config.run.dir={tmp / 'a_file'}"], ["'run.dir'", "not a directory"]),
      "run dir under a file": ([cfg, f"--config.run.dir={tmp / 'a_file' / 'run'}"],
                               ["'run.dir'", "a_file exists and is not a directory"]),
      "run dir's checkpoints is a file": ([cfg, f"--config.run.dir={tmp / 'ckpt_file'}"],
                                          ["checkpoints exists and is not a directory"]),
      "model path missing": ([f"--config={ROOT}/configs/tiny.py:{tmp}/no_model,{tiny_run.data}"],
                             ["model.path", "no_model", "does not exist"]),
      "model path is a file": ([f"--config={ROOT}/configs/tiny.py:{tmp / 'a_file'},{tiny_run.data}"],
                               ["model.path", "is a file"]),
      "data source missing": ([f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{tmp}/nope.jsonl"],
                              ["nope.jsonl", "does not exist"]),
      "data source extension": ([f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{tmp / 'data.csv'}"],
                                ["data.csv", "unsupported extension"]),
      "eval data missing": ([cfg, f"--config.data.eval=('{tmp}/eval.jsonl',)"], ["eval.jsonl", "does not exist"]),
      "eval prompts missing": ([cfg, f"--config.eval.prompts={tmp}/prompts.jsonl"], ["prompts.jsonl"]),
      "chat template missing": ([cfg, f"--config.data.chat_template={tmp}/t.jinja"], ["t.jinja", "neither a built-in"]),
      "distillation teacher missing": ([cfg, "--config.train.objective=distill", f"--config.distill.teacher={tmp}/t"],
                                       ["distill.teacher", "does not exist"]),
      "distillation without a teacher": ([cfg, "--config.train.objective=distill"], ["'distill.teacher'"]),
  }


def test_checks_before_data_and_weights(tiny_run, tmp_path):
  import jax

  import jaxtune.train.loop  # noqa: F401 - imported (and jax started) before the clock runs
  jax.devices()
  for name, (argv, names) in _cases(tiny_run, tmp_path).items():
    run = tmp_path / "runs" / name.replace(" ", "_")
    if not any(a.startswith("--config.run.dir") for a in argv):
      argv = [*argv, f"--config.run.dir={run}"]
    t0 = time.perf_counter()
    r = run_main("train", *argv)
    elapsed = time.perf_counter() - t0
    assert_error(r, *names)
    assert "data:" not in r.out, f"{name}: data was read before the error\n{r.out}"
    assert not os.path.exists(run) or os.listdir(run) == [], f"{name}: {os.listdir(run)}"
    print(f"{name}: {elapsed:.2f}s")
    assert elapsed < 3, f"{name} took {elapsed:.1f}s"


def test_export_adapter_of_a_full_fine_tune(tiny_run, tmp_path):
  r = run_main("export", "--run", tiny_run.run_abs, "--out", str(tmp_path / "hf"), "--adapter-only")
  assert_error(r, "--adapter-only", "full fine-tune")
  assert not os.path.exists(tmp_path / "hf")
