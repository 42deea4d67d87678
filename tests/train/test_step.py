"""Train-step invariants: compiles once, K micro-batches equal one batch, loss falls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import OptimCfg
from jaxtune.models import ModelConfig, build_model
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step

CFG = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_position_embeddings=128)


def packed_batch(seed: int, b: int = 8, t: int = 32) -> dict[str, np.ndarray]:
  """Random packed rows: segments of random length, padding at the end, first token of a segment untrained."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, CFG.vocab_size, size=(b, t)).astype(np.int32)
  seg = np.zeros((b, t), np.int32)
  pos = np.zeros((b, t), np.int32)
  mask = np.zeros((b, t), np.int32)
  for r in range(b):
    cur, s = 0, 1
    while cur < t - 4:
      n = int(rng.integers(4, 14))
      n = min(n, t - cur - int(rng.integers(0, 3)))
      if n < 2:
        break
      seg[r, cur:cur + n] = s
      pos[r, cur:cur + n] = np.arange(n)
      mask[r, cur + 1:cur + n] = rng.integers(0, 2, size=n - 1)
      mask[r, cur + n - 1] = 1
      cur, s = cur + n, s + 1
  return {"input_ids": ids, "segment_ids": seg, "positions": pos, "loss_mask": mask}


def make(grad_accum: int = 1, lr: float = 1e-3, steps: int = 10):
  mesh = mesh_lib.make_mesh(1, 1, 1)
  with jax.set_mesh(mesh):
    model = build_model(CFG, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(OptimCfg(lr=lr, warmup_steps=2, clip_norm=1.0, weight_decay=0.01), steps)
    graphdef, state = init_state(model, tx)
    fn = jit_train_step(graphdef, tx, schedule, grad_accum, state_shardings(state), mesh_lib.batch_sharding(mesh))
  return mesh, fn, state


def run(fn, state, mesh, seeds):
  losses = []
  with jax.set_mesh(mesh):
    for s in seeds:
      state, m = fn(state, {k: jnp.asarray(v) for k, v in packed_batch(s).items()})
      losses.append(float(m["loss"]))
  return state, losses


def test_step_compiles_once():
  mesh, fn, state = make()
  state, _ = run(fn, state, mesh, range(4))
  assert fn._cache_size() == 1
  assert int(state.step) == 4


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accum_equals_full_batch(k):
  mesh, fn1, s1 = make(grad_accum=1)
  _, fnk, sk = make(grad_accum=k)
  s1, l1 = run(fn1, s1, mesh, range(3))
  sk, lk = run(fnk, sk, mesh, range(3))
  np.testing.assert_allclose(l1, lk, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(sk.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_loss_falls_on_a_fixed_batch():
  mesh, fn, state = make(lr=1e-2, steps=40)
  _, losses = run(fn, state, mesh, [7] * 40)
  assert losses[-1] < 0.5 * losses[0], losses
