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

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v6e-16"
ACCELERATOR = "v6e"
CHIPS = 16


def get_config():
  return hardware_recipe("Qwen/Qwen3-8B", "qwen3_8b_v6e16", fsdp=16, batch_size=64, grad_accum=4, lr=1e-5)
