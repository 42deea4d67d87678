"""Llama 3.1 8B Instruct, full fine-tune, on one node of 8 NVIDIA H100 80GB.

Topology: 8xH100 (80 GB HBM each) in one node, NVLink. Mesh: pure FSDP over
the 8 GPUs (data=1, fsdp=8, tensor=1). Global batch 32 rows x 4096 tokens =
131k tokens per step, in 2 micro-steps of 2 rows per GPU.

Launch, on the node (one process drives all 8 GPUs):
  pip install -e . 'jax[cuda12]'
  jaxtune train --config configs/llama3_1_8b_h100x8.py
or through SLURM (one task per node):
  sbatch --nodes=1 launch/slurm_gpu.sbatch configs/llama3_1_8b_h100x8.py
For N nodes set --config.mesh.data=N (the batch must stay a multiple of 8*N rows per micro-step).

Memory per GPU (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 4.0 GB + AdamW moments 8.0 GB +
gradients 8.0 GB (float32, sharded 8 ways; twice, for the accumulator) +
activations about 26 GB (rematerialised layers, attention scores, float32
logits) = about 46 GB of 80 GB.

The model is gated on the Hub: set HF_TOKEN, or point model.path at a local copy.
"""

from jaxtune.config import default_config

TOPOLOGY = "8xH100"
ACCELERATOR = "h100"
CHIPS = 8


def get_config():
  c = default_config()
  c.model.path = "meta-llama/Llama-3.1-8B-Instruct"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"

  # Local JSONL (OpenAI messages); on several nodes, a path every node sees.
  c.data.train = ({"path": "data/sft_train.jsonl", "format": "messages", "weight": 1.0},)
  c.data.eval = ({"path": "data/sft_eval.jsonl", "format": "messages", "weight": 1.0},)
  c.data.seq_len = 4096
  c.data.packing = True
  c.data.mask = "assistant"

  c.train.batch_size = 32  # rows; batch_size / grad_accum must be a multiple of mesh.data * mesh.fsdp = 8
  c.train.grad_accum = 2
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
  c.mesh.fsdp = 8
  c.mesh.tensor = 1

  c.checkpoint.every = 500
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True
  c.run.dir = "runs/llama3_1_8b_h100x8"
  return c
