"""prepare(): builds a loadable model, tokenizer and data once, then reuses the cache."""

import importlib.util
import os

import numpy as np
import pytest
from flax import nnx

import jaxtune
from jaxtune.config import Config, ConfigError
from jaxtune.data.chat import load_tokenizer, tokenize_messages
from jaxtune.demo import assets, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo_config(cache_dir, **demo):
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(ROOT, "configs", "demo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cd = mod.get_config(str(cache_dir))
  cd.demo.train_examples = demo.get("train_examples", 40)
  cd.demo.heldout_examples = demo.get("heldout_examples", 10)
  return Config.from_dict(cd)


def test_prepare_builds_then_reuses(tmp_path, monkeypatch):
  cfg = demo_config(tmp_path)
  a = assets.prepare(cfg, log=lambda *_: None)
  assert a == assets.asset_paths(str(tmp_path))
  assert a.model_dir == assets.asset_paths(str(tmp_path)).model_dir
  assert len(tasks.read_jsonl(str(a.train_path))) == 40
  assert len(tasks.read_jsonl(str(a.heldout_path))) == 10
  assert (a.model_dir / "config.json").exists() and (a.model_dir / "tokenizer.json").exists()
  marker = (a.root / assets.MARKER).stat().st_mtime_ns

  def no_build(*_):
    raise AssertionError("rebuilt a complete cache")

  monkeypatch.setattr(assets, "build", no_build)
  assert assets.prepare(cfg, log=lambda *_: None) == a
  assert (a.root / assets.MARKER).stat().st_mtime_ns == marker
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_spec_change_rebuilds(tmp_path):
  a = assets.prepare(demo_config(tmp_path), log=lambda *_: None)
  assets.prepare(demo_config(tmp_path, train_examples=25), log=lambda *_: None)
  assert len(tasks.read_jsonl(str(a.train_path))) == 25
  assert sorted(p.name for p in tmp_path.iterdir()) == [assets.VERSION]


def test_model_and_tokenizer_load(tmp_path):
  a = assets.prepare(demo_config(tmp_path), log=lambda *_: None)
  model = jaxtune.load_pretrained(str(a.model_dir))
  tok = load_tokenizer(str(a.model_dir))
  rec = tasks.read_jsonl(str(a.train_path))[0]
  ids, mask = tokenize_messages(rec["messages"], tok)
  logits = nnx.jit(lambda m, x: m(x))(model, ids[None])
  assert logits.shape == (1, len(ids), model.config.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()
  assert model.config.vocab_size >= len(tok)


def test_config_must_point_at_cache(tmp_path):
  cfg = demo_config(tmp_path)
  other = Config.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "path": str(tmp_path / "x")}})
  with pytest.raises(ConfigError, match="model.path"):
    assets.prepare(other, log=lambda *_: None)
