"""The small CPU recipe that tests and quick local runs build on.

Point it at a model dir and data with overrides, e.g.
  jaxtune train --config configs/tiny.py --config.model.path=/tmp/tiny-llama \
      --config.data.train="({'path': 'chat.jsonl', 'format': 'messages'},)"
or pass both after a colon: --config=configs/tiny.py:/tmp/tiny-llama,chat.jsonl
"""

from jaxtune.config import default_config


def get_config(arg: str | None = None):
  c = default_config()
  if arg:
    model_path, *data = arg.split(",")
    c.model.path = model_path
    c.data.train = tuple({"path": p, "format": "auto", "weight": 1.0} for p in data)
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.data.seq_len = 128
  c.data.packing = True
  c.train.batch_size = 4
  c.train.steps = 20
  c.train.log_every = 5
  c.train.seed = 0
  c.optim.lr = 1e-3
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
  c.run.dir = "runs/tiny"
  return c
