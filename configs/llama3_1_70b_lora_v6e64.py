"""Llama 3.1 70B Instruct, LoRA (rank 16, alpha 32, all projections), on a Cloud TPU v6e-64 slice.

Topology: v6e-64 = 64 Trillium chips (8x8), 32 GB HBM per chip. Mesh: FSDP 16
x tensor 4 (data=1, fsdp=16, tensor=4): the tensor axis splits heads, MLP and
vocabulary, so the attention scores and logits of a row are spread over 4
chips. Global batch 32 rows x 4096 tokens = 131k tokens per step (the same as
the v5p-64 recipe), in 2 micro-steps of 1 row per FSDP group.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v6e ZONE=us-east1-d ACCELERATOR=v6e-64 \
      launch/tpu_vm.sh --create configs/llama3_1_70b_lora_v6e64.py
or on GKE:
  CLUSTER=my-cluster TPU_TYPE=v6e-64 launch/xpk.sh configs/llama3_1_70b_lora_v6e64.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): frozen float32 base weights 4.4 GB + adapters
(207M parameters) with their AdamW moments and gradients 0.8 GB + activations
about 10 GB = about 15 GB of 32 GB.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.config import default_config

TOPOLOGY = "v6e-64"
ACCELERATOR = "v6e"
CHIPS = 64


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

  c.train.batch_size = 32  # rows; batch_size / grad_accum must be a multiple of mesh.data * mesh.fsdp = 16
  c.train.grad_accum = 2
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
  c.mesh.fsdp = 16
  c.mesh.tensor = 4

  c.checkpoint.every = 250
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  # Every process writes its own shards: the run dir must be shared by all workers.
  c.run.dir = "/mnt/shared/runs/llama3_1_70b_lora_v6e64"
  return c
