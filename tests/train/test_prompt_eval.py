"""Eval prompts during training: exact match, the token budget, and the samples/metrics a run writes."""

import importlib.util
import json
import os

import pytest

import jaxtune
from jaxtune.config import Config
from jaxtune.generate import generate
from jaxtune.data.prompts import read_prompts
from jaxtune.train.prompt_eval import exact_match, new_token_budget
from tests.helpers.cli import ROOT, chat_records
from tests.helpers.hf_models import make_tiny_chat_model
from tests.helpers.tokenizers import make_tokenizer

USER = {"role": "user", "content": "Join apple and river."}


def _write_jsonl(path, rows):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_exact_match_and_budget(tmp_path):
  assert exact_match(" 42\n", "42") and not exact_match("4 2", "42")
  _, tok = make_tokenizer(str(tmp_path))
  path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "reference": "abc"}, {"prompt": "b", "reference": "a"}])
  prompts = read_prompts(path)
  assert new_token_budget(tok, prompts) == len(tok("abc", add_special_tokens=False)["input_ids"]) + 8
  assert new_token_budget(tok, prompts, 5) == 5
  assert new_token_budget(tok, read_prompts(_write_jsonl(tmp_path / "q.jsonl", [{"prompt": "a"}]))) == 256


def _tiny_config(model_dir, data, run_dir, **overrides):
  spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(ROOT, "configs", "tiny.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"{model_dir},{data}")
  c.run.dir = str(run_dir)
  for key, value in overrides.items():
    sec, name = key.split("__")
    c[sec][name] = value
  return Config.from_dict(c)


def test_training_writes_samples_and_exact_match(tmp_path):
  from jaxtune.train.loop import train

  model_dir, tok = make_tiny_chat_model(tmp_path, "llama")
  data = _write_jsonl(tmp_path / "chat.jsonl", chat_records(16))
  convs = [[{"role": "user", "content": f"Join {w} and stone."}] for w in ("apple", "river", "cloud", "music")]
  base = generate(jaxtune.load_pretrained(model_dir), tok, convs, max_new_tokens=6)
  # A learning rate too small to change any greedy token: the first two references are the model's
  # own replies (hits), the other two cannot match.
  refs = [base[0]["completion"], base[1]["completion"], "\u2603 no", "\u2603 never"]
  prompts = _write_jsonl(tmp_path / "prompts.jsonl",
                         [{"messages": c, "reference": r} for c, r in zip(convs, refs)])
  cfg = _tiny_config(model_dir, data, tmp_path / "run", train__steps=2, train__eval_every=1, optim__lr=1e-9,
                     eval__prompts=prompts, eval__max_new_tokens=6, checkpoint__every=0)
  result = train(cfg)

  rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  assert [(r["step"], r["eval_exact_match"]) for r in rows if "eval_exact_match" in r] == [(1, 0.5), (2, 0.5)]
  samples = [json.loads(x) for x in open(tmp_path / "run" / "samples.jsonl")]
  assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
  assert [s["exact"] for s in samples[4:]] == [True, True, False, False]
  assert [s["reference"] for s in samples[4:]] == refs
  again = generate(result.model(), tok, convs, max_new_tokens=6)
  assert [s["completion"] for s in samples[4:]] == [o["completion"] for o in again]
  assert result.samples == [{k: v for k, v in s.items() if k != "step"} for s in samples[4:]]
  events = [f for f in os.listdir(tmp_path / "run" / "tensorboard") if "tfevents" in f]
  assert any(b"eval/samples" in open(tmp_path / "run" / "tensorboard" / f, "rb").read() for f in events)


def test_eval_every_needs_something_to_evaluate(tmp_path):
  from jaxtune.config import ConfigError
  with pytest.raises(ConfigError, match="eval.prompts"):
    _tiny_config("m", "d.jsonl", tmp_path, train__eval_every=5)
