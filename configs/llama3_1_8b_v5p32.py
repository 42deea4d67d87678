"""Llama 3.1 8B Instruct, full fine-tune, on a Cloud TPU v5p-32 slice.

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 16 chips (data=1, fsdp=16,
tensor=1). Global batch 64 rows x 4096 tokens = 262k tokens per step, 4 rows
per chip, no accumulation.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/llama3_1_8b_v5p32.py --config.train.steps=2000
or directly on each worker:
  jaxtune train --config configs/llama3_1_8b_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 2.0 GB + AdamW moments 4.0 GB +
gradients 2.0 GB (float32, all sharded 16 ways) + activations about 51 GB
(rematerialised layers; the float32 [rows, seq, vocab] logits and their
gradient, then the [heads, seq, seq] attention scores, are the largest part)
= about 59 GB of 95 GB. Set train.grad_accum=2 to halve the activations.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.config import default_config

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  c = default_config()
  c.model.path = "meta-llama/Llama-3.1-8B-Instruct"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"

  # Read with open() by every process: put the file on a filesystem every worker
  # mounts at the same path (Filestore/NFS, or a gcsfuse mount of gs://YOUR_BUCKET).
  c.data.train = ({"path": "/mnt/shared/data/sft_train.jsonl", "format": "messages", "weight": 1.0},)
  c.data.eval = ({"path": "/mnt/shared/data/sft_eval.jsonl", "format": "messages", "weight": 1.0},)
  c.data.seq_len = 4096
  c.data.packing = True
  c.data.mask = "assistant"

  c.train.batch_size = 64  # rows of seq_len tokens; a multiple of mesh.data * mesh.fsdp = 16
  c.train.grad_accum = 1
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.log_every = 10

  c.optim.lr = 1e-5
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  c.mesh.data = 1
  c.mesh.fsdp = 16
  c.mesh.tensor = 1

  c.checkpoint.every = 500
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  # Every process writes its own shards: the run dir must be shared by all workers.
  c.run.dir = "/mnt/shared/runs/llama3_1_8b_v5p32"
  return c
