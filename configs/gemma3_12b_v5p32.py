"""Gemma 3 12B IT (text decoder), full fine-tune, on a Cloud TPU v5p-32 slice.

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 16 chips (data=1, fsdp=16,
tensor=1). Global batch 64 rows x 4096 tokens = 262k tokens per step, in 2
micro-steps of 2 rows per chip. The checkpoint is multimodal; jaxtune tunes
its text decoder (Gemma3ForCausalLM: 5 sliding-window layers of 1024 tokens
per global layer).

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/gemma3_12b_v5p32.py
or directly on each worker:
  jaxtune train --config configs/gemma3_12b_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 2.9 GB + AdamW moments 5.9 GB +
gradients 5.9 GB (float32, sharded 16 ways; twice, for the accumulator) +
activations about 35 GB (rematerialised layers; mostly the float32 logits over
the 262k vocabulary) = about 50 GB of 95 GB.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.config import default_config

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  c = default_config()
  c.model.path = "google/gemma-3-12b-it"
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

  c.train.batch_size = 64  # rows; batch_size / grad_accum must be a multiple of mesh.data * mesh.fsdp = 16
  c.train.grad_accum = 2
  c.train.steps = 2000
  c.train.eval_every = 200
  c.train.log_every = 10

  c.optim.lr = 5e-6
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
  c.run.dir = "/mnt/shared/runs/gemma3_12b_v5p32"
  return c
