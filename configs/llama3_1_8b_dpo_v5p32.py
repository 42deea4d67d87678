"""Llama 3.1 8B Instruct, full DPO (sigmoid, beta 0.1), on a Cloud TPU v5p-32 slice.

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 16 chips (data=1, fsdp=16,
tensor=1). Global batch 64 rows x 4096 tokens, packed with whole preference
pairs (chosen and rejected of a pair always share a row), no accumulation.
The reference log-probs are computed once before the first step (one forward
pass over the pairs, sharded over every chip) and cached under data.cache_dir,
so training holds no reference model.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/llama3_1_8b_dpo_v5p32.py
or directly on each worker:
  jaxtune train --config configs/llama3_1_8b_dpo_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): as the SFT recipe, since the cached reference adds
no model: parameters 2.0 GB + AdamW moments 4.0 GB + gradients 2.0 GB + activations
about 51 GB = about 59 GB of 95 GB. dpo.reference=live would add a frozen copy
of the weights (2.0 GB) and a forward pass per step.

Data: /mnt/shared/data/dpo_{train,eval}.jsonl, preference records
({"prompt", "chosen", "rejected"} as messages or strings).
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  return hardware_recipe("meta-llama/Llama-3.1-8B-Instruct", "llama3_1_8b_dpo_v5p32", fsdp=16, batch_size=64,
                         lr=5e-7, steps=1000, objective="dpo")
