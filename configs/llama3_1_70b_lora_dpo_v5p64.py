"""Llama 3.1 70B Instruct, LoRA-DPO (rank 16, alpha 32, all projections), on a Cloud TPU v5p-64 slice.

Topology: v5p-64 = 32 chips (64 TensorCores; JAX sees one device per chip) on 8
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 32 chips (data=1, fsdp=32,
tensor=1). Global batch 32 rows x 4096 tokens of packed preference pairs. The
reference is the base model with the adapters off: its log-probs are computed
once from the starting weights (adapters at zero) and cached; no copy of the
weights is ever made.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-64 \
      launch/tpu_vm.sh --create configs/llama3_1_70b_lora_dpo_v5p64.py
or directly on each worker:
  jaxtune train --config configs/llama3_1_70b_lora_dpo_v5p64.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): as the LoRA SFT recipe on this slice: frozen float32
base weights 8.8 GB + adapters with their AdamW moments and gradients 2.2 GB +
activations about 22 GB = about 33 GB of 95 GB.

Data: /mnt/shared/data/dpo_{train,eval}.jsonl, preference records.
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-64"
ACCELERATOR = "v5p"
CHIPS = 32


def get_config():
  return hardware_recipe("meta-llama/Llama-3.1-70B-Instruct", "llama3_1_70b_lora_dpo_v5p64", fsdp=32,
                         batch_size=32, lora_rank=16, lr=5e-6, steps=1000, objective="dpo")
