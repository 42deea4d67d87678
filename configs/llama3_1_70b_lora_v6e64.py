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

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v6e-64"
ACCELERATOR = "v6e"
CHIPS = 64


def get_config():
  # Adapters take a larger learning rate than full fine-tuning.
  return hardware_recipe("meta-llama/Llama-3.1-70B-Instruct", "llama3_1_70b_lora_v6e64", fsdp=16, tensor=4,
                         batch_size=32, grad_accum=2, lora_rank=16, lr=1e-4, steps=1000)
