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

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-64"
ACCELERATOR = "v5p"
CHIPS = 32


def get_config():
  # Adapters take a larger learning rate than full fine-tuning.
  return hardware_recipe("meta-llama/Llama-3.1-70B-Instruct", "llama3_1_70b_lora_v5p64", fsdp=32,
                         batch_size=32, lora_rank=16, lr=1e-4, steps=1000)
