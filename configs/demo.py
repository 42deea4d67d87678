"""The self-contained demo: `jaxtune train --config configs/demo.py`.

Builds (once, cached) a tiny random Llama, a byte-level tokenizer with the
Llama 3 chat template and synthetic tasks with exact answers, tunes on CPU and
prints held-out exact match before and after. The cache lives in
$JAXTUNE_CACHE/demo (default ~/.cache/jaxtune/demo); another place can be given
after a colon: --config=configs/demo.py:/path/to/cache
"""

from jaxtune.config import default_config
from jaxtune.demo.assets import asset_paths


def get_config(arg: str | None = None):
  c = default_config()
  c.demo.enabled = True
  c.demo.cache_dir = arg or ""
  c.demo.train_examples = 20000
  c.demo.heldout_examples = 200
  c.demo.show = 6
  assets = asset_paths(c.demo.cache_dir)
  c.model.path = str(assets.model_dir)
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.data.train = ({"path": str(assets.train_path), "format": "messages", "weight": 1.0},)
  c.data.eval = ({"path": str(assets.heldout_path), "format": "messages", "weight": 1.0},)
  c.eval.prompts = str(assets.heldout_path)  # sampled at every eval point; the last one is "after tuning"
  c.eval.max_new_tokens = 0  # the longest answer + a few tokens
  c.data.seq_len = 256
  c.data.packing = True
  c.data.mask = "assistant"
  c.train.batch_size = 16
  c.train.steps = 450
  c.train.seed = 0
  c.train.log_every = 50
  c.train.eval_every = 150
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.mesh.data = 1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.checkpoint.every = 0
  c.checkpoint.keep = 1
  c.run.dir = "runs/demo"
  return c
