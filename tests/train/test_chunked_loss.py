"""The chunked cross-entropy equals the full one (value and gradient) and needs far less memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.models import build_model
from jaxtune.train import loss as loss_lib
from tests.train.test_step import CFG, packed_batch


def loss_and_grad(model, chunk):
  graphdef, params = nnx.split(model)

  def f(p, batch):
    s, n = loss_lib.model_xent(nnx.merge(graphdef, p), batch, chunk)
    return s / n

  return jax.jit(jax.value_and_grad(f)), params


def test_chunked_equals_full():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in packed_batch(3).items()}
  full, params = loss_and_grad(model, 0)
  chunked, _ = loss_and_grad(model, 7)  # 31 targets: 5 chunks, the last one padded
  (l0, g0), (l1, g1) = full(params, batch), chunked(params, batch)
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_chunked_saves_memory():
  """Compiled temp memory with a 32k vocabulary over 1024 positions: chunks of 128 need a fraction."""
  cfg = dataclasses.replace(CFG, vocab_size=32768, num_layers=1, layer_types=None, max_position_embeddings=1024)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch = {k: jax.ShapeDtypeStruct((2, 1024), jnp.int32) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}
  temp = {}
  for chunk in (0, 128):
    fn, params = loss_and_grad(model, chunk)
    temp[chunk] = fn.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
  full_logits = 2 * 1024 * 32768 * 4
  print(f"temp bytes: full {temp[0] / 2**20:.0f} MiB, chunked {temp[128] / 2**20:.0f} MiB "
        f"(one float32 logits tensor: {full_logits / 2**20:.0f} MiB)")
  assert temp[0] >= full_logits
  assert temp[128] < temp[0] / 4
