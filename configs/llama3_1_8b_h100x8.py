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

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "8xH100"
ACCELERATOR = "h100"
CHIPS = 8


def get_config():
  # root="": data/sft_{train,eval}.jsonl and runs/ under the working directory; on several nodes,
  # a root every node mounts.
  return hardware_recipe("meta-llama/Llama-3.1-8B-Instruct", "llama3_1_8b_h100x8", fsdp=8, batch_size=32,
                         grad_accum=2, lr=1e-5, root="")
