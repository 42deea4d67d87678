"""Issue 18, class 7: small ones: a mistyped command or key, a config file without get_config, a run dir
that has not saved a checkpoint yet, and neighbours of those."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.helpers.cli import ROOT, assert_error, run_main


@pytest.mark.parametrize("argv,names", [
    (["trian"], ["unknown command 'trian'", "did you mean 'train'"]),
    (["expot", "--run", "x"], ["unknown command 'expot'", "did you mean 'export'"]),
    (["data", "stat"], ["usage: jaxtune data {stats,inspect}"]),
    (["data"], ["usage: jaxtune data {stats,inspect}"]),
])
def test_unknown_commands(argv, names):
  assert_error(run_main(*argv), *names)


def test_config_file_mistakes(tiny_run, tmp_path):
  cases = {
      "noget.py": ("x = 1\n", ["noget.py has no get_config() function"]),
      "returns.py": ("def get_config():\n  return {'train': {}}\n", ["returns.py", "not an ml_collections ConfigDict"]),
  }
  for name, (text, names) in cases.items():
    (tmp_path / name).write_text(text)
    assert_error(run_main("train", f"--config={tmp_path / name}"), *names)
  line = assert_error(run_main("train", tiny_run.config, "--config.train.stepz=3"),
                      "unknown config key 'train.stepz'", "did you mean 'train.steps'")
  assert "\\" not in line and "\n" not in line
  line = assert_error(run_main("train", tiny_run.config, "--config.trian.steps=3"), "'trian.steps'",
                      "did you mean 'train.steps'")
  assert "\\" not in line
  assert_error(run_main("train", tiny_run.config, "--config.train.steps=ten"), "--config.train.steps=ten")
  assert_error(run_main("train", tiny_run.config, "extra"), "unexpected arguments ['extra']")
  assert_error(run_main("train"), "--config PATH is required")


@pytest.fixture
def unsaved_run(tiny_run, tmp_path):
  """A run dir as a run killed before its first checkpoint leaves it: config, hf_source, no step."""
  run = tmp_path / "run"
  os.makedirs(run / "checkpoints")
  shutil.copy(os.path.join(tiny_run.run_abs, "config.json"), run / "config.json")
  shutil.copytree(os.path.join(tiny_run.run_abs, "hf_source"), run / "hf_source")
  os.makedirs(run / "checkpoints" / "3.orbax-checkpoint-tmp")  # a save cut short
  return str(run)


def test_run_dir_without_a_checkpoint_yet(unsaved_run, tmp_path):
  for argv in (["generate", "--model", unsaved_run, "--prompt", "hi"],
               ["export", "--run", unsaved_run, "--out", str(tmp_path / "hf")]):
    assert_error(run_main(*argv), unsaved_run, "no finished checkpoint yet")
  shutil.rmtree(os.path.join(unsaved_run, "checkpoints"))  # killed before Orbax made its directory
  for argv in (["generate", "--model", unsaved_run, "--prompt", "hi"],
               ["export", "--run", unsaved_run, "--out", str(tmp_path / "hf")]):
    assert_error(run_main(*argv), unsaved_run, "has not saved a checkpoint yet")
  assert not os.path.exists(tmp_path / "hf")


def test_generate_inputs(tiny_run, tmp_path):
  missing = str(tmp_path / "nope.jsonl")
  assert_error(run_main("generate", "--model", str(tiny_run.model_dir), "--prompts", missing), missing,
               "does not exist")
  empty = tmp_path / "empty.jsonl"
  empty.write_text(json.dumps({"messages": [{"role": "assistant", "content": "no question"}]}) + "\n")
  assert_error(run_main("generate", "--model", str(tiny_run.model_dir), "--prompts", str(empty)),
               f"{empty}:1", "strict")
  assert_error(run_main("generate", "--model", "", "--prompt", "hi"), "--model is empty")
  assert_error(run_main("generate", "--model", str(tmp_path / "no" / "dir"), "--prompt", "hi"), "does not exist")
  assert_error(run_main("generate", "--model", str(tiny_run.model_dir), "--prompt", "hi", "--chat-template",
                        str(tmp_path / "x.jinja")), "x.jinja", "neither a built-in")


def test_config_command_errors(tmp_path):
  assert_error(run_main("config", f"--config={tmp_path / 'missing.py'}"), "missing.py", "does not exist")
  assert_error(run_main("config", f"--config={ROOT}/configs/tiny.py", "--config.optim.lrr=1"),
               "'optim.lrr'", "did you mean 'optim.lr'")
