"""The demo's files: a random-init tiny Llama with its tokenizer, and task data.

Everything is built locally and deterministically into one cache directory
(`$JAXTUNE_CACHE/demo/<VERSION>` or `~/.cache/jaxtune/demo/<VERSION>`, or
`demo.cache_dir/<VERSION>`). A build goes to a temporary sibling directory and
is renamed into place after its marker file is written, so a directory with a
marker whose spec matches is complete and is reused as is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

_LOG = logging.getLogger(__name__)

VERSION = "v1"
SEED = 0
MARKER = "READY.json"

# The base model: a tiny Llama, sized so that tuning fits the demo's time budget.
MODEL = dict(hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4, num_kv_heads=4,
             rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=2048)


@dataclasses.dataclass(frozen=True)
class DemoAssets:
  root: Path
  model_dir: Path
  train_path: Path
  heldout_path: Path


def cache_root(cache_dir: str = "") -> Path:
  """Where demo versions live: `cache_dir`, else $JAXTUNE_CACHE/demo, else ~/.cache/jaxtune/demo."""
  if cache_dir:
    return Path(cache_dir).expanduser().resolve()
  env = os.environ.get("JAXTUNE_CACHE")
  base = Path(env).expanduser() if env else Path.home() / ".cache" / "jaxtune"
  return (base / "demo").resolve()


def asset_paths(cache_dir: str = "") -> DemoAssets:
  """The paths prepare() fills; configs/demo.py points the config at them."""
  root = cache_root(cache_dir) / VERSION
  return DemoAssets(root=root, model_dir=root / "model", train_path=root / "train.jsonl",
                    heldout_path=root / "heldout.jsonl")


def model_config():
  """The demo base model's ModelConfig (vocab and special ids from the tokenizer)."""
  from jaxtune.demo.tokenizer import build_tokenizer, vocab_size
  from jaxtune.models import ModelConfig
  tok = build_tokenizer()
  return ModelConfig(family="llama", vocab_size=vocab_size(), bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **MODEL)


def spec(demo_cfg) -> dict[str, Any]:
  """What a cache directory was built from; a different spec means a rebuild."""
  from jaxtune.demo.tasks import TRAIN_MIX
  return {"version": VERSION, "seed": SEED, "model": MODEL, "train_mix": TRAIN_MIX,
          "train_examples": int(demo_cfg.train_examples), "heldout_examples": int(demo_cfg.heldout_examples)}


def is_ready(root: Path, want: dict[str, Any]) -> bool:
  try:
    return json.loads((root / MARKER).read_text()) == want
  except (OSError, ValueError):
    return False


def build(out: Path, demo_cfg) -> None:
  """Writes tokenizer + random model + train/held-out JSONL into `out` (marker last)."""
  from flax import nnx

  import jaxtune
  from jaxtune.demo import tasks
  from jaxtune.demo.tokenizer import build_tokenizer
  from jaxtune.models import build_model

  out.mkdir(parents=True, exist_ok=True)
  tok = build_tokenizer()
  model = build_model(model_config(), rngs=nnx.Rngs(SEED))
  jaxtune.save_pretrained(model, out / "model", tokenizer=tok)
  train, heldout = tasks.make_splits(demo_cfg.train_examples, demo_cfg.heldout_examples, seed=SEED)
  tasks.write_jsonl(train, str(out / "train.jsonl"))
  tasks.write_jsonl(heldout, str(out / "heldout.jsonl"))
  (out / MARKER).write_text(json.dumps(spec(demo_cfg), sort_keys=True))


def check_config(cfg, assets: DemoAssets) -> None:
  """The config must train on what prepare() builds (model.path, data.train)."""
  from jaxtune.config import ConfigError
  if Path(cfg.model.path).expanduser().resolve() != assets.model_dir:
    raise ConfigError(f"config key 'model.path': the demo builds its model at {assets.model_dir}, but the config "
                      f"says {cfg.model.path!r}; set the cache with $JAXTUNE_CACHE or configs/demo.py:CACHE_DIR")
  train = [Path(s.path).expanduser().resolve() for s in cfg.data.train]
  if assets.train_path not in train:
    raise ConfigError(f"config key 'data.train': the demo writes its data to {assets.train_path}, "
                      f"but the config trains on {[str(p) for p in train]}")


def prepare(cfg, *, log=_LOG.info) -> DemoAssets:
  """Builds the demo's model, tokenizer and data once; later calls reuse the cache."""
  assets = asset_paths(cfg.demo.cache_dir)
  check_config(cfg, assets)
  want = spec(cfg.demo)
  if is_ready(assets.root, want):
    log(f"[demo] using cached model and data in {assets.root}")
    return assets
  log(f"[demo] building a tiny random Llama, a byte-level tokenizer and task data in {assets.root}")
  assets.root.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}-tmp-", dir=assets.root.parent))
  try:
    build(tmp, cfg.demo)
    _install(tmp, assets.root, want)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return assets


def _install(tmp: Path, root: Path, want: dict[str, Any]) -> None:
  """Renames a finished build into place; an older build there is moved aside first."""
  if root.exists():
    if is_ready(root, want):  # another process finished first
      return
    old = Path(tempfile.mkdtemp(prefix=f".{VERSION}-old-", dir=root.parent))
    os.replace(root, old / "stale")
    shutil.rmtree(old, ignore_errors=True)
  try:
    os.replace(tmp, root)
  except OSError:
    if not is_ready(root, want):
      raise


# The distillation demo's student: the same tokenizer and vocabulary, a quarter of the teacher's parameters.
STUDENT = dict(MODEL, hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=4)


def build_student(out: Path) -> None:
  """A random-init student model with the demo tokenizer, built once into `out` (reused when present)."""
  if (out / MARKER).exists():
    return
  from flax import nnx

  import jaxtune
  from jaxtune.demo.tokenizer import build_tokenizer
  from jaxtune.models import ModelConfig, build_model
  tok = build_tokenizer()
  base = model_config()
  cfg = ModelConfig(family="llama", vocab_size=base.vocab_size, bos_token_id=base.bos_token_id,
                    eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id, **STUDENT)
  tmp = out.parent / f".{out.name}-tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  jaxtune.save_pretrained(build_model(cfg, rngs=nnx.Rngs(SEED + 1)), tmp, tokenizer=tok)
  (tmp / MARKER).write_text(json.dumps({"student": STUDENT}, sort_keys=True))
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
