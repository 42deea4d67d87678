"""QLoRA base weights (`model.quantize`): stored bytes vs float32 and logit error vs the float model, per family.

For each of the six families a random HF model of a small but not tiny shape (hidden 256, MLP 768, 3 layers,
4/2 heads of 64, vocab 2048, weights ~N(0, 0.02) as HF initialises them; each family's own flags: biases, q/k norms, Gemma norms, softcaps, sliding
layers) is saved as safetensors, then loaded three ways: float32, int8 and nf4 (each kernel quantized as it is
read). Reported per family and format:
  - base_ratio: bytes of the whole frozen base as stored (codes + scales of the decoder projections, float32
    embeddings / lm_head / norms) over its float32 bytes;
  - proj_ratio: the same over the quantized projections alone (int8 ~0.27, nf4 ~0.14 at 64-value blocks);
  - logit_rel_err: max |logits_q - logits_f32| / max |logits_f32| on two packed rows of 128 tokens.
Real model sizes are reported too (base_ratio from shapes only, no weights): Llama 3.1 8B / 70B, Qwen3 8B,
Gemma 3 12B.

  python bench/qlora.py

  RESULT llama fmt=int8 base_ratio=... proj_ratio=... logit_rel_err=...
  RESULT preset_llama_3_1_70b fmt=nf4 base_ratio=... base_gb=...
"""

from __future__ import annotations

import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPE = dict(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=512, initializer_range=0.02)
PRESETS = {"llama_3_1_8b": "meta-llama/Llama-3.1-8B-Instruct", "llama_3_1_70b": "meta-llama/Llama-3.1-70B-Instruct",
           "qwen3_8b": "Qwen/Qwen3-8B", "gemma3_12b": "google/gemma-3-12b-it"}


def base_bytes(model) -> tuple[int, int, int, int]:
  """(stored bytes of the base, its float32 bytes, stored bytes of the quantized projections, their float32
  bytes) of a (possibly abstract) model."""
  import numpy as np
  from flax import nnx

  from jaxtune.models import quant
  from jaxtune.models.layers import Linear

  def arrays(kind):
    return [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, kind))]

  def nbytes(xs):
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in xs)

  params, codes = arrays(nnx.Param), arrays(quant.Quantized)
  proj_f32 = sum(4 * int(np.prod(node.kernel_shape)) for _, node in nnx.iter_graph(model)
                 if isinstance(node, Linear) and node.quantize is not None)
  f32 = 4 * sum(int(np.prod(x.shape)) for x in params) + proj_f32
  return nbytes(params) + nbytes(codes), f32, nbytes(codes), proj_f32


def main() -> int:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from jaxtune.models import build_model, quant
  from jaxtune.models.presets import preset_model_config
  from jaxtune.weights.hf_load import load_pretrained
  from tests.helpers.hf_models import FAMILIES, make_tiny_hf, packed_batch

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; shape {SHAPE}", flush=True)
  ok = True
  with tempfile.TemporaryDirectory() as tmp:
    for family in FAMILIES:
      d, _ = make_tiny_hf(tmp, family, max_shard_size="100MB", **SHAPE)
      ids, pos, seg = (jnp.asarray(x) for x in packed_batch([[40, 70, 18], [100, 28]], 128, SHAPE["vocab_size"]))
      ref = np.asarray(load_pretrained(d)(ids, pos, seg))
      for fmt in quant.FORMATS:
        model = load_pretrained(d, quantize=fmt)
        err = float(np.abs(np.asarray(model(ids, pos, seg)) - ref).max() / np.abs(ref).max())
        stored, f32, pq, pf = base_bytes(model)
        print(f"RESULT {family} fmt={fmt} base_ratio={stored / f32:.4f} proj_ratio={pq / pf:.4f} "
              f"logit_rel_err={err:.2e}", flush=True)
        ok &= err < 0.2
  for name, hub in PRESETS.items():
    cfg = preset_model_config(hub)
    for fmt in quant.FORMATS:
      model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0), quantize=fmt, scan_layers=True))
      stored, f32, pq, pf = base_bytes(model)
      print(f"RESULT preset_{name} fmt={fmt} base_ratio={stored / f32:.4f} proj_ratio={pq / pf:.4f} "
            f"base_gb={stored / 1e9:.1f} f32_gb={f32 / 1e9:.1f}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
