"""Llama 3.1 8B Instruct, full fine-tune on 64k-token rows, on a Cloud TPU v5p-32 slice (context parallelism).

Topology: v5p-32 = 16 chips (32 TensorCores; JAX sees one device per chip) on 4
hosts, 95 GB HBM per chip. Mesh: fsdp=4 x context=4 (data=1, tensor=1): each
65,536-token row is split over 4 chips (16,384 tokens each; attention gathers
the row's keys and values over the context axis, jaxtune/models/context_attention.py),
and parameters and optimizer state are sharded 4 ways. Global batch 4 rows x
65,536 tokens = 262k tokens per step (one row per fsdp group), no accumulation;
the loss runs over 1,024 positions of each chip's slice at a time
(train.loss_chunk), so no chip holds its slice's full-vocabulary logits.

Long reasoning traces: set data.train to data whose examples are up to 64k
tokens; shorter examples are packed into the rows as usual.

Launch (every worker runs the same command; see launch/README.md):
  TPU_NAME=my-v5p ZONE=us-east5-a ACCELERATOR=v5p-32 \
      launch/tpu_vm.sh --create configs/llama3_1_8b_64k_v5p32.py --config.train.steps=1000
or directly on each worker:
  jaxtune train --config configs/llama3_1_8b_64k_v5p32.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 8.0 GB + AdamW moments 16.1 GB +
gradients 8.0 GB (float32, sharded 4 ways) + activations about 11.0 GB (the
residual stream of 32 rematerialised layers over 16,384 tokens, one layer's
working set, the gathered keys/values of the row, one loss chunk's logits)
= about 43 GB of 95 GB.

The model is gated on the Hub: set HF_TOKEN on every worker, or point
model.path at a local copy.
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v5p-32"
ACCELERATOR = "v5p"
CHIPS = 16


def get_config():
  return hardware_recipe("meta-llama/Llama-3.1-8B-Instruct", "llama3_1_8b_64k_v5p32", fsdp=4, context=4,
                         batch_size=4, lr=1e-5, steps=1000, seq_len=65536, loss_chunk=1024)
