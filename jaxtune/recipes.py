"""The shared builder behind the real-hardware recipes in `configs/`.

Each recipe file keeps its hardware constants (`TOPOLOGY`, `ACCELERATOR`,
`CHIPS`), its docstring (topology, launch, memory estimate) and a `get_config()`
that calls `hardware_recipe` with only what sets it apart: model, mesh, batch,
LoRA, learning rate, schedule length. Everything the recipes share (bfloat16
compute over float32 master weights, full remat, 4096-token packed rows with
assistant-only loss, cosine schedule, checkpoint cadence, where data and runs
live) is stated once, here.

It lives in the package, not in `configs/`, because ml-collections loads a
config file by path from any working directory: `configs/` is not importable,
while `jaxtune` is installed.
"""

from __future__ import annotations

import os

import ml_collections

from jaxtune.config import default_config

ALL_PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def hardware_recipe(model: str, run: str, *, fsdp: int, tensor: int = 1, data: int = 1,
                    batch_size: int, grad_accum: int = 1, lr: float, steps: int = 2000,
                    warmup_steps: int | None = None, checkpoint_every: int | None = None,
                    lora_rank: int = 0, lora_alpha: float | None = None,
                    lora_targets: tuple[str, ...] = ALL_PROJECTIONS, dtype: str = "bfloat16",
                    param_dtype: str = "float32", remat: str = "full", seq_len: int = 4096,
                    root: str = "/mnt/shared", objective: str = "sft", dpo_beta: float = 0.1
                    ) -> ml_collections.ConfigDict:
  """The ConfigDict of a recipe that tunes hub model `model` as run `run`.

  `batch_size` is the global batch in rows of `seq_len` tokens; `batch_size /
  grad_accum` must be a multiple of `data * fsdp`. `warmup_steps` defaults to
  5% of `steps` and `checkpoint_every` to a quarter of it. `lora_rank` 0 is a
  full fine-tune; otherwise adapters of that rank train on `lora_targets`, with
  `lora_alpha` (default: twice the rank).

  `objective` "dpo" tunes on preference pairs (`data/dpo_{train,eval}.jsonl`) with the sigmoid DPO loss
  at `dpo_beta` and reference log-probs computed once and cached (memory as SFT's).

  `root` holds `data/sft_{train,eval}.jsonl` and `runs/<run>/`. Every process
  reads the data with open() and writes its own checkpoint shards, so on a
  multi-host slice it must be a filesystem every worker mounts at the same path
  (Filestore/NFS, or a gcsfuse mount of gs://YOUR_BUCKET); "" makes both
  relative to the working directory (one node).
  """
  c = default_config()
  c.model.path = model
  c.model.dtype = dtype
  c.model.param_dtype = param_dtype
  c.model.remat = remat

  if lora_rank:
    c.lora.rank = lora_rank
    c.lora.alpha = 2.0 * lora_rank if lora_alpha is None else float(lora_alpha)
    c.lora.targets = tuple(lora_targets)

  fmt = "preference" if objective == "dpo" else "messages"
  source = lambda split: {"path": os.path.join(root, "data", f"{objective}_{split}.jsonl"), "format": fmt,
                          "weight": 1.0}
  c.data.train = (source("train"),)
  c.data.eval = (source("eval"),)
  c.data.seq_len = seq_len
  c.data.packing = True
  c.data.mask = "assistant"

  c.train.objective = objective
  if objective == "dpo":
    c.dpo.loss = "sigmoid"
    c.dpo.beta = dpo_beta
    c.dpo.reference = "cached"
    c.data.cache_dir = os.path.join(root, "cache")  # tokenized pairs and reference log-probs, shared by hosts
  c.train.batch_size = batch_size
  c.train.grad_accum = grad_accum
  c.train.steps = steps
  c.train.eval_every = 200
  c.train.log_every = 10

  c.optim.lr = lr
  c.optim.warmup_steps = steps // 20 if warmup_steps is None else warmup_steps
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  c.mesh.data = data
  c.mesh.fsdp = fsdp
  c.mesh.tensor = tensor

  c.checkpoint.every = steps // 4 if checkpoint_every is None else checkpoint_every
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  c.run.dir = os.path.join(root, "runs", run)
  return c


def cpu_recipe(arg: str | None = None, *, objective: str = "sft", run: str = "runs/tiny") -> ml_collections.ConfigDict:
  """The small CPU recipe tests and quick local runs build on (configs/tiny.py, configs/dpo_tiny.py).

  `arg` is "MODEL_DIR,DATA[,DATA...]" (`--config=configs/tiny.py:MODEL_DIR,DATA`). float32, 128-token
  packed rows (256 for preference pairs, which share a row), 4 rows a step, 20 steps, one device.
  `objective` "dpo" trains on preference data with the sigmoid loss, beta 0.1 and a cached reference.
  """
  c = default_config()
  fmt = "preference" if objective == "dpo" else "auto"
  if arg:
    model_path, *data = arg.split(",")
    c.model.path = model_path
    c.data.train = tuple({"path": p, "format": fmt, "weight": 1.0} for p in data)
  c.train.objective = objective
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.data.seq_len = 256 if objective == "dpo" else 128
  c.data.packing = True
  c.train.batch_size = 4
  c.train.steps = 20
  c.train.log_every = 5
  c.train.seed = 0
  c.optim.lr = 1e-4 if objective == "dpo" else 1e-3
  c.optim.warmup_steps = 2
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.mesh.data = 1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  if objective == "dpo":
    c.dpo.loss = "sigmoid"
    c.dpo.beta = 0.1
    c.dpo.reference = "cached"
  c.run.dir = run
  return c
