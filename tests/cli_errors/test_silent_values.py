"""Issue 18, class 2: values that used to run with an odd meaning are refused, naming the key and the valid
range (or, for a tokenizer, the two sizes); a few that may be meant are said out loud as warnings."""

from __future__ import annotations

import os
import shutil

import pytest

from jaxtune.train.lock import RunLock
from tests.helpers.cli import ROOT, assert_error, assert_ok, run_main

CONFIG_CASES = {  # override -> what the error names
    "--config.run.dir=": ("'run.dir'", "empty"),
    "--config.run.dir=   ": ("'run.dir'", "empty"),
    "--config.optim.warmup_steps=-1": ("'optim.warmup_steps'", ">= 0"),
    "--config.optim.clip_norm=-1.0": ("'optim.clip_norm'", ">= 0"),
    "--config.checkpoint.every=-2": ("'checkpoint.every'", ">= 0"),
    "--config.checkpoint.keep=-1": ("'checkpoint.keep'", ">= 0"),
    "--config.lora.rank=-8": ("'lora.rank'", ">= 0"),
    # beyond the list
    "--config.lora.alpha=0.0": ("'lora.alpha'", "> 0"),
    "--config.optim.lr=0.0": ("'optim.lr'", "> 0"),
    "--config.optim.b2=1.5": ("'optim.b2'", "<= 1"),
    "--config.train.steps=0": ("'train.steps'", ">= 1"),
    "--config.train.batch_size=0": ("'train.batch_size'", ">= 1"),
    "--config.train.grad_accum=3": ("'train.batch_size'", "train.grad_accum=3"),
    "--config.data.seq_len=1": ("'data.seq_len'", ">= 2"),
    "--config.data.eval_fraction=1.0": ("'data.eval_fraction'", "[0, 1)"),
    "--config.mesh.data=0": ("'mesh'", ">= 1 or -1"),
    "--config.eval.temperature=-1.0": ("'eval.temperature'", ">= 0"),
    "--config.dpo.beta=0.0": ("'dpo.beta'", "> 0"),
}


@pytest.mark.parametrize("override", CONFIG_CASES, ids=lambda o: o.split("--config.")[1])
def test_out_of_range_values_name_key_and_range(tiny_run, override, tmp_path):
  r = run_main("train", tiny_run.config, f"--config.run.dir={tmp_path / 'run'}", override)
  assert_error(r, *CONFIG_CASES[override])
  assert not os.path.exists(tmp_path / "run")


GENERATE_CASES = {
    ("--max-new-tokens", "0"): "--max-new-tokens",
    ("--max-new-tokens", "-5"): "--max-new-tokens",
    ("--temperature", "nan"): "finite --temperature",
    ("--temperature", "inf"): "finite --temperature",
    ("--temperature", "-1"): "--temperature >= 0",
    ("--top-p", "0"): "0 < --top-p <= 1",
    ("--top-p", "1.5"): "0 < --top-p <= 1",
    ("--top-k", "-1"): "--top-k >= 0",
}


@pytest.mark.parametrize("args", GENERATE_CASES, ids=" ".join)
def test_generate_sampling_values(tiny_run, args):
  r = run_main("generate", "--model", str(tiny_run.model_dir), "--prompt", "hi", *args)
  assert_error(r, GENERATE_CASES[args], args[1])


@pytest.fixture(scope="module")
def big_tokenizer_model(tiny_run, tmp_path_factory):
  """The tiny model with two tokens added to its tokenizer (and none to its embeddings)."""
  from transformers import AutoTokenizer
  d = tmp_path_factory.mktemp("bigtok") / "m"
  shutil.copytree(tiny_run.model_dir, d)
  tok = AutoTokenizer.from_pretrained(d)
  tok.add_special_tokens({"additional_special_tokens": ["<|x1|>", "<|x2|>"]})
  tok.save_pretrained(d)
  return str(d), len(tok)


def test_tokenizer_larger_than_the_vocabulary(tiny_run, big_tokenizer_model, tmp_path):
  model, n = big_tokenizer_model
  vocab = n - 2
  r = run_main("train", f"--config={ROOT}/configs/tiny.py:{model},{tiny_run.data}", f"--config.run.dir={tmp_path}/r")
  assert_error(r, f"tokenizer has {n} tokens", f"vocabulary has {vocab}")
  assert "data:" not in r.out  # refused before the data is tokenized
  r = run_main("generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "2")
  assert_error(r, f"tokenizer has {n} tokens", f"vocabulary has {vocab}")


def test_said_out_loud(tiny_run, tmp_path):
  """Settings that may be meant but usually are not: warned about, not refused."""
  # A resumed run already past train.steps trains nothing: it says so.
  r = run_main("train", tiny_run.config, f"--config.run.dir={ROOT}/{tiny_run.copy('past_steps')}",
               "--config.train.steps=3", "--config.checkpoint.every=3")
  assert_ok(r)
  assert "already at step 6 and train.steps is 3" in r.err, r.err
  # data.seq_len past the model's positions (128): warned before anything is read.
  run = str(tmp_path / "run")
  with RunLock(run):  # stops the run right after the pre-flight checks
    r = run_main("train", tiny_run.config, f"--config.run.dir={run}", "--config.data.seq_len=256")
  assert_error(r, "in use")
  assert "data.seq_len=256 is longer than the model's max_position_embeddings=128" in r.err, r.err


def test_export_step_that_does_not_exist(tiny_run, tmp_path):
  for step in ("-1", "5", "60"):
    r = run_main("export", "--run", tiny_run.run_abs, "--step", step, "--out", str(tmp_path / "hf"))
    assert_error(r, f"step {step} is not a finished checkpoint", "have [3, 6]")
