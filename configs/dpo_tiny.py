"""The small CPU recipe for preference tuning (DPO) that tests and quick local runs build on.

Point it at a model dir (an SFT-tuned one, usually) and preference data, e.g.
  jaxtune train --config configs/dpo_tiny.py --config.model.path=/tmp/tiny-sft \
      --config.data.train="({'path': 'pairs.jsonl', 'format': 'preference'},)"
or pass both after a colon: --config=configs/dpo_tiny.py:/tmp/tiny-sft,pairs.jsonl
"""

from jaxtune.config import default_config


def get_config(arg: str | None = None):
  c = default_config()
  if arg:
    model_path, *data = arg.split(",")
    c.model.path = model_path
    c.data.train = tuple({"path": p, "format": "preference", "weight": 1.0} for p in data)
  c.train.objective = "dpo"
  c.dpo.loss = "sigmoid"
  c.dpo.beta = 0.1
  c.dpo.reference = "cached"
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.data.seq_len = 256
  c.data.packing = True
  c.train.batch_size = 4
  c.train.steps = 20
  c.train.log_every = 5
  c.train.seed = 0
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 2
  c.optim.schedule = "cosine"
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.mesh.data = 1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.run.dir = "runs/dpo_tiny"
  return c
