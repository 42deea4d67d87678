"""End to end through the command line: train -> checkpoints -> resume -> export -> transformers."""

import json
import os

import numpy as np
import pytest

from tests.helpers.cli import ROOT, chat_records, jaxtune
from tests.helpers.hf_models import make_tiny_chat_model


def test_train_resume_export_reload(tiny_run):
  # The shared run (tests/helpers/runs.py): 6 steps, checkpoints and eval at 3 and 6, a relative run dir.
  tmp, model_dir, cfg = tiny_run.root, tiny_run.model_dir, tiny_run.config
  run_abs = tiny_run.run_abs
  assert "dropped 2" in tiny_run.stdout, tiny_run.stdout
  rows = [json.loads(l) for l in open(os.path.join(run_abs, "metrics.jsonl"))]
  assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(rows[-1])
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [3, 6] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_abs, "tensorboard")))
  assert rows[-1]["step"] == 6 and all(np.isfinite(r["loss"]) for r in rows)
  assert sorted(os.listdir(os.path.join(run_abs, "checkpoints"))) == ["3", "6"]

  # Same command with more steps resumes from step 6 (on a copy: other tests share the run).
  run = tiny_run.copy("run_resumed")
  run_abs = os.path.join(ROOT, run)
  p = jaxtune("train", cfg, f"--config.run.dir={run}", "--config.train.steps=8", "--config.checkpoint.every=3")
  assert "resumed" in p.stdout, p.stdout
  rows = [json.loads(l) for l in open(os.path.join(run_abs, "metrics.jsonl"))]
  assert rows[-1]["step"] == 8

  out = str(tmp / "hf")
  jaxtune("export", "--run", run, "--out", out)
  import torch
  import transformers
  from jaxtune.export import restore_model

  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template, "exported tokenizer lost its chat template"
  # transformers and vLLM stop at the declared eos ids: the tokenizer's eos (end of turn) is among them.
  declared = json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"]
  assert tok.eos_token_id in (declared if isinstance(declared, list) else [declared])
  ids = tok.apply_chat_template([{"role": "user", "content": "Join apple and river."}],
                                add_generation_prompt=True, tokenize=True, return_dict=False)
  ids = np.asarray([ids], np.int32)
  with torch.no_grad():
    ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  model, _, step = restore_model(run_abs)
  assert step == 8
  got = np.asarray(model(ids))
  assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
  # The tuned weights differ from the base model's.
  base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  with torch.no_grad():
    assert np.abs(base(torch.tensor(ids, dtype=torch.long)).logits.numpy() - ref).max() > 1e-3

  # Generation from the run dir (its latest checkpoint, hf_source/ tokenizer) equals generation from the export.
  def gen(model):
    p = jaxtune("generate", "--model", model, "--prompt", "Join apple and river.", "--max-new-tokens", "6", "--json")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]

  from_run, from_export = gen(run), gen(out)
  assert len(from_run) == 1 and from_run == from_export and from_run[0]["completion_ids"]


def test_config_typo_names_the_key(tiny_run):
  p = jaxtune("train", tiny_run.config, "--config.train.stepz=3", check=False)
  assert p.returncode != 0
  assert "stepz" in p.stderr and "steps" in p.stderr, p.stderr


def test_no_valid_example_is_an_error(tiny_run):
  tmp, model_dir = tiny_run.root, tiny_run.model_dir
  bad = tmp / "bad.jsonl"
  bad.write_text("{oops\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
  p = jaxtune("train", f"--config=configs/tiny.py:{model_dir},{bad}", f"--config.run.dir={tmp / 'badrun'}",
              check=False)
  assert p.returncode != 0
  assert "bad.jsonl:1" in p.stderr + p.stdout, p.stderr


def test_base_model_with_a_template_that_adds_tokens(tmp_path):
  """A base model whose tokenizer has no chat template, tuned with data.chat_template=llama3: the tokens the
  template needs are added, the vocabulary grows, and the export reloads in transformers with the grown
  vocabulary, identical logits, and the template's end-of-turn marker declared as eos (where it stops)."""
  import torch
  import transformers

  from jaxtune.export import restore_model
  model_dir, tok = make_tiny_chat_model(tmp_path, "llama", template="chatml", chat_template="")
  data = tmp_path / "chat.jsonl"
  data.write_text("\n".join(chat_records(16)) + "\n")
  run, out = str(tmp_path / "run"), str(tmp_path / "hf")
  p = jaxtune("train", f"--config=configs/tiny.py:{model_dir},{data}", f"--config.run.dir={run}",
              "--config.train.steps=2", "--config.data.chat_template=llama3")
  assert f"vocabulary {len(tok)} -> 384" in p.stdout, p.stdout
  jaxtune("export", "--run", run, "--out", out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  new_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf.config.vocab_size == 384 and len(new_tok) == len(tok) + 4
  eot = new_tok.convert_tokens_to_ids("<|eot_id|>")
  assert new_tok.eos_token_id == eot and eot in hf.generation_config.eos_token_id
  ids = np.asarray([new_tok.apply_chat_template([{"role": "user", "content": "Join apple and river."}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)])
  assert eot in new_tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                            tokenize=True, return_dict=False)
  with torch.no_grad():
    ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  model, _, _ = restore_model(run)
  assert np.abs(np.asarray(model(ids)) - ref).max() / np.abs(ref).max() <= 1e-5
