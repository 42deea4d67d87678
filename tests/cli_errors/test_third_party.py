"""Issue 18, class 4: a damaged model directory, data file or config file is reported as one line naming the
file (and line, where there is one) and the problem, not as the third-party library's exception."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest

from tests.helpers.cli import ROOT, assert_error, run_main

SHARD = "model-00003-of-00012.safetensors"


def _truncate(p, keep=0.5):
  os.truncate(p, int(os.path.getsize(p) * keep))


def _edit_config(d, **fields):
  cfg = json.load(open(d / "config.json"))
  cfg.update(fields)
  json.dump(cfg, open(d / "config.json", "w"))


MODEL_DAMAGE = {  # name -> (damage(model_dir), what the error names)
    "a truncated shard": (lambda d: _truncate(d / SHARD), [SHARD, "truncated or damaged"]),
    "a shard cut inside its header": (lambda d: _truncate(d / SHARD, 0.001), [SHARD, "not a readable safetensors"]),
    "a garbage shard": (lambda d: (d / SHARD).write_bytes(b"garbage" * 10), [SHARD, "not a readable safetensors"]),
    "an empty shard": (lambda d: (d / SHARD).write_bytes(b""), [SHARD]),
    "a missing shard": (lambda d: (d / SHARD).unlink(), [SHARD, "does not exist", "index.json"]),
    "an index that is not JSON": (lambda d: (d / "model.safetensors.index.json").write_text("nope"),
                                  ["model.safetensors.index.json:1", "not valid JSON"]),
    "an index without weight_map": (lambda d: (d / "model.safetensors.index.json").write_text("{}"),
                                    ["model.safetensors.index.json", "weight_map"]),
    "no weights at all": (lambda d: [p.unlink() for p in d.glob("model*")],
                          ["no model.safetensors or model.safetensors.index.json"]),
    "only pickle weights": (lambda d: ([p.unlink() for p in d.glob("model*")], (d / "pytorch_model.bin").write_bytes(b"x")),
                            ["pytorch_model.bin", "pickle"]),
    "config.json not JSON": (lambda d: (d / "config.json").write_text('{\n  "a": 1,\n  oops\n}'),
                             ["config.json:3", "not valid JSON"]),
    "config.json a list": (lambda d: (d / "config.json").write_text("[1, 2]"), ["config.json", "JSON object"]),
    "config.json missing": (lambda d: (d / "config.json").unlink(), ["has no config.json"]),
    "an unsupported architecture": (lambda d: _edit_config(d, architectures=["FooForCausalLM"], model_type="foo"),
                                    ["config.json", "unsupported architecture ['FooForCausalLM']", "LlamaForCausalLM"]),
    "heads that do not divide": (lambda d: _edit_config(d, num_key_value_heads=3),
                                 ["config.json", "num_heads=4 is not divisible by num_kv_heads=3"]),
    "an unsupported RoPE": (lambda d: _edit_config(d, rope_scaling={"rope_type": "yarn", "factor": 2.0}),
                            ["config.json", "yarn"]),
    "no tokenizer files": (lambda d: [p.unlink() for p in d.glob("tokenizer*")], ["no tokenizer files"]),
    "a garbage tokenizer.json": (lambda d: (d / "tokenizer.json").write_text("{oops"),
                                 ["cannot load the tokenizer in"]),
}


@pytest.fixture(scope="module")
def damaged_models(tiny_run, tmp_path_factory):
  out = {}
  for i, (name, (damage, _)) in enumerate(MODEL_DAMAGE.items()):
    d = tmp_path_factory.mktemp(f"model{i}") / "m"
    shutil.copytree(tiny_run.model_dir, d)
    damage(d)
    out[name] = d
  return out


@pytest.mark.parametrize("name", MODEL_DAMAGE)
def test_damaged_model_dir(tiny_run, damaged_models, name, tmp_path):
  d = damaged_models[name]
  r = run_main("train", f"--config={ROOT}/configs/tiny.py:{d},{tiny_run.data}", f"--config.run.dir={tmp_path}/r")
  assert_error(r, *MODEL_DAMAGE[name][1])
  assert "data:" not in r.out  # seen before the data is read
  r = run_main("generate", "--model", str(d), "--prompt", "hi", "--max-new-tokens", "2")
  assert_error(r, *MODEL_DAMAGE[name][1])


def test_model_path_that_is_not_a_model_dir(tiny_run, tmp_path):
  r = run_main("train", f"--config={ROOT}/configs/tiny.py:{tiny_run.run_abs},{tiny_run.data}",
               f"--config.run.dir={tmp_path}/r")
  assert_error(r, tiny_run.run_abs, "jaxtune run dir, not a model directory", "jaxtune export")
  r = run_main("train", f"--config={ROOT}/configs/tiny.py", f"--config.data.train=('{tiny_run.data}',)",
               f"--config.run.dir={tmp_path}/r")
  assert_error(r, "model.path is empty")
  r = run_main("data", "stats", f"--config={ROOT}/configs/tiny.py", f"--config.data.train=('{tiny_run.data}',)")
  assert_error(r, "model.path is empty")


def _records(n=20):
  from tests.helpers.cli import chat_records
  return chat_records(n)


def _gz_truncated(p):
  raw = gzip.compress(("\n".join(_records(400)) + "\n").encode())
  p.write_bytes(raw[: len(raw) * 2 // 3])


DATA_DAMAGE = {  # file name -> (write(path), what the error names)
    "x.parquet": (lambda p: p.write_text("not parquet at all"), ["x.parquet", "not a readable parquet file"]),
    "trunc.jsonl.gz": (_gz_truncated, ["trunc.jsonl.gz", "ends early, after line", "truncated"]),
    "plain.jsonl.gz": (lambda p: p.write_text("\n".join(_records()) + "\n"), ["plain.jsonl.gz", "not a gzip file"]),
    "dict.json": (lambda p: p.write_text('{"messages": []}'), ["dict.json", "must hold a list", "dict"]),
    "broken.json": (lambda p: p.write_text('[{"messages": [] ,,]'), ["broken.json:1:", "not valid JSON"]),
    "lines.json": (lambda p: p.write_text("\n".join(_records()) + "\n"), ["lines.json:2:", ".jsonl file"]),
    "latin1.json": (lambda p: p.write_bytes(b'[{"prompt": "caf\xe9", "completion": "x"}]'), ["latin1.json", "not UTF-8"]),
    "deep.json": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), ["deep.json", "nested too deeply"]),
    "x.csv": (lambda p: p.write_text("a,b\n"), ["x.csv", "unsupported extension"]),
    "x.array_record": (lambda p: p.write_bytes(b"garbage"), ["x.array_record", "not a readable ArrayRecord"]),
}


@pytest.mark.parametrize("fname", DATA_DAMAGE)
def test_damaged_data_file(tiny_run, fname, tmp_path):
  p = tmp_path / fname
  DATA_DAMAGE[fname][0](p)
  r = run_main("train", f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{p}", f"--config.run.dir={tmp_path}/r")
  assert_error(r, *DATA_DAMAGE[fname][1])
  r = run_main("data", "stats", f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{p}")
  assert_error(r, *DATA_DAMAGE[fname][1])


def test_config_file_errors_name_file_and_line(tmp_path):
  cases = {
      "missing.py": (None, ["missing.py", "does not exist"]),
      "syntax.py": ("def get_config(:\n  pass\n", ["syntax.py:1: syntax error"]),
      "raises.py": ("def get_config():\n  raise RuntimeError('boom')\n", ["raises.py:2:", "RuntimeError: boom"]),
      "imports.py": ("import no_such_module\n", ["imports.py:1:", "no_such_module"]),
      "typed.py": ("from jaxtune.config import default_config\n\ndef get_config():\n  c = default_config()\n"
                   "  c.train.steps = 'ten'\n  return c\n", ["typed.py:5:"]),
      "invented.py": ("from jaxtune.config import default_config\n\ndef get_config():\n  c = default_config()\n"
                      "  c.optim.learning_rate = 1e-4\n  return c\n", ["invented.py", "sets 'optim.learning_rate'"]),
      "typo.py": ("from jaxtune.config import default_config\n\ndef get_config():\n  c = default_config()\n"
                  "  c.optim.warmup_step = 5\n  return c\n", ["typo.py", "did you mean 'optim.warmup_steps'"]),
  }
  for name, (text, names) in cases.items():
    if text is not None:
      (tmp_path / name).write_text(text)
    assert_error(run_main("train", f"--config={tmp_path / name}"), *names)
    assert_error(run_main("data", "stats", f"--config={tmp_path / name}"), *names)
