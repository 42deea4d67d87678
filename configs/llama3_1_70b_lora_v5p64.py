"""Llama 3.1 70B Instruct, LoRA (rank 16, alpha 32, all projections), on a Cloud TPU v5p-64 slice.

Topology: v5p-64 = 32 chips (64 TensorCores; JAX sees one device per chip) on 8
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 32 chips (data=1, fsdp=32,
tensor=1): the frozen base weights are split 32 ways, the adapters train.
Global batch 32 rows x 4096 tokens = 131k tokens per step, 1 row per chip.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 \
      launch/tpu_vm.sh --create configs/llama3_1_70b_lora_v5p64.py
or directly on each worker:
  jaxtune train --config configs/llama3_1_70b_lora_v5p64.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): frozen float32 base weights 8.8 GB + adapters
(207M parameters) with their AdamW moments and gradients 2.2 GB (their rank
dimension is not sharded) + activations about 22 GB (rematerialised layers,
attention scores, float32 logits) = about 33 GB of 95 GB.
model.param_dtype=bfloat16 would halve the base weights.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.config import default_config

TOPOLOGY = "v5p-64"
ACCELERATOR = "v5p"
CHIPS = 32


def get_config():
  c = default_config()
  c.model.path = "meta-llama/Llama-3.1-70B-Instruct"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"

  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")

  # Read with open() by every process: put the file on a filesystem every worker
  # mounts at the same path (Filestore/NFS, or a gcsfuse mount of gs://YOUR_BUCKET).
  c.data.train = ({"path": "/mnt/shared/data/sft_train.jsonl", "format": "messages", "weight": 1.0},)
  c.data.eval = ({"path": "/mnt/shared/data/sft_eval.jsonl", "format": "messages", "weight": 1.0},)
  c.data.seq_len = 4096
  c.data.packing = True
  c.data.mask = "assistant"

  c.train.batch_size = 32  # rows; a multiple of mesh.data * mesh.fsdp = 32
  c.train.grad_accum = 1
  c.train.steps = 1000
  c.train.eval_every = 200
  c.train.log_every = 10

  c.optim.lr = 1e-4  # adapters take a larger rate than full fine-tuning
  c.optim.warmup_steps = 50
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  c.mesh.data = 1
  c.mesh.fsdp = 32
  c.mesh.tensor = 1

  c.checkpoint.every = 250
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  # Every process writes its own shards: the run dir must be shared by all workers.
  c.run.dir = "/mnt/shared/runs/llama3_1_70b_lora_v5p64"
  return c
