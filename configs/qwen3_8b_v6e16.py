"""Qwen3 8B, full fine-tune, on a Cloud TPU v6e-16 slice.

Topology: v6e-16 = 16 Trillium chips (4x4), 32 GB HBM per chip. Mesh: pure
FSDP over the 16 chips (data=1, fsdp=16, tensor=1). Global batch 64 rows x
4096 tokens = 262k tokens per step, in 4 micro-steps of 1 row per chip.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v6e ZONE=us-east1-d ACCELERATOR=v6e-16 \
      launch/tpu_vm.sh --create configs/qwen3_8b_v6e16.py
or on GKE:
  CLUSTER=my-cluster TPU_TYPE=v6e-16 launch/xpk.sh configs/qwen3_8b_v6e16.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 2.0 GB + AdamW moments 4.1 GB +
gradients 4.1 GB (float32, sharded 16 ways; twice, for the accumulator) +
activations about 14 GB (rematerialised layers; mostly the float32 logits over
the 152k vocabulary) = about 24 GB of 32 GB, the tightest of the recipes. Qwen3 chat data with <think>
blocks can be long: raise seq_len only with fewer rows per micro-step.
"""

from jaxtune.config import default_config

TOPOLOGY = "v6e-16"
ACCELERATOR = "v6e"
CHIPS = 16


def get_config():
  c = default_config()
  c.model.path = "Qwen/Qwen3-8B"
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
  c.train.grad_accum = 4
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
  c.run.dir = "/mnt/shared/runs/qwen3_8b_v6e16"
  return c
