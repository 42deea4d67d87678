"""Llama 3.1 70B Instruct, QLoRA (NF4 base, LoRA rank 16 on all projections), on a Cloud TPU v6e-8.

Topology: v6e-8 = 8 Trillium chips (2x4) on one host, 32 GB HBM per chip. Mesh:
FSDP over the 8 chips (data=1, fsdp=8, tensor=1). The frozen base is stored as
4-bit NormalFloat codes with a float32 scale per 64 inputs (model.quantize=nf4,
jaxtune/models/quant.py), quantized tensor by tensor as the checkpoint is read,
and dequantized inside each matmul; the adapters train in float32. Global batch
16 rows x 4096 tokens = 65k tokens per step, in 2 micro-steps of 1 row per
chip; the loss runs over 1,024 positions at a time (train.loss_chunk).

Launch (one host):
  TPU_NAME=my-v6e ZONE=us-east1-d ACCELERATOR=v6e-8 \
      launch/tpu_vm.sh --create configs/llama3_1_70b_qlora_v6e8.py
or directly on the host:
  jaxtune train --config configs/llama3_1_70b_qlora_v6e8.py

Memory per chip (an estimate from shapes, computed by tests/test_recipes.py;
not measured on hardware): parameters 6.4 GB (the NF4 base with float32
embeddings, lm_head and norms, plus the 207M adapter parameters) + AdamW
moments 1.1 GB + gradients 1.1 GB (the adapters', accumulated over the 2
micro-steps) + activations about 17.6 GB = about 26 GB of 32 GB. With a
float32 base the weights alone would take 35 GB per chip.

The model is gated on the Hub: set HF_TOKEN on the host, or point model.path at
a local copy.
"""

from jaxtune.recipes import hardware_recipe

TOPOLOGY = "v6e-8"
ACCELERATOR = "v6e"
CHIPS = 8


def get_config():
  return hardware_recipe("meta-llama/Llama-3.1-70B-Instruct", "llama3_1_70b_qlora_v6e8", fsdp=8, batch_size=16,
                         grad_accum=2, lora_rank=16, lr=1e-4, steps=1000, loss_chunk=1024, quantize="nf4")
