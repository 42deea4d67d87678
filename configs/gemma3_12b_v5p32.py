"""Gemma 3 12B IT (text decoder), full fine-tune, on a Cloud TPU v5p-32 slice.

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: pure FSDP over the 16 chips (data=1, fsdp=16,
tensor=1). Global batch 64 rows x 4096 tokens = 262k tokens per step, in 2
micro-steps of 2 rows per chip. The checkpoint is multimodal; jaxtune tunes
its text decoder (Gemma3ForCausalLM: 5 sliding-window layers of 1024 tokens
per global layer).

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/gemma3_12b_v5p32.py
or directly on each worker:
  jaxtune train --config configs/gemma3_12b_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 2.9 GB + AdamW moments 5.9 GB +
gradients 5.9 GB (float32, sharded 16 ways; twice, for the accumulator) +
activations about 35 GB (rematerialised layers; mostly the float32 logits over
the 262k vocabulary) = about 50 GB of 95 GB.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  return hardware_recipe("google/gemma-3-12b-it", "gemma3_12b_v5p32", fsdp=16, batch_size=64, grad_accum=2,
                         lr=5e-6)
