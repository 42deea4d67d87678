"""Llama 3.1 8B Instruct, full fine-tune, on a Cloud TPU v5p-32 slice.

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 16 chips (data=1, fsdp=16,
tensor=1). Global batch 64 rows x 4096 tokens = 262k tokens per step, 4 rows
per chip, no accumulation.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/llama3_1_8b_v5p32.py --config.train.steps=2000
or directly on each worker:
  jaxtune train --config configs/llama3_1_8b_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 2.0 GB + AdamW moments 4.0 GB +
gradients 2.0 GB (float32, all sharded 16 ways) + activations about 51 GB
(rematerialised layers; the float32 [rows, seq, vocab] logits and their
gradient, then the [heads, seq, seq] attention scores, are the largest part)
= about 59 GB of 95 GB. Set train.grad_accum=2 to halve the activations.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  return hardware_recipe("meta-llama/Llama-3.1-8B-Instruct", "llama3_1_8b_v5p32", fsdp=16, batch_size=64,
                         lr=1e-5)
