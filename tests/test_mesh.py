"""The same steps on 1 device and on (data, fsdp, tensor) meshes of 8 fake CPU devices give the same losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import OptimCfg
from jaxtune.models import build_model
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step
from tests.train.test_step import CFG, packed_batch

STEPS = 3


def spec(x, ndim=2):
  """A sharding's PartitionSpec as a full-length tuple (P() == P(None, None))."""
  t = tuple(x.sharding.spec)
  return t + (None,) * (ndim - len(t))


def run_on(shape):
  mesh = mesh_lib.make_mesh(*shape)
  with jax.set_mesh(mesh):
    model = build_model(CFG, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.device_put(params, mesh_lib.state_shardings(params, mesh)))
    tx, schedule = make_optimizer(OptimCfg(lr=1e-3, warmup_steps=1), STEPS)
    graphdef, state = init_state(model, tx)
    batch_sh = mesh_lib.batch_sharding(mesh)
    fn = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), batch_sh)
    losses = []
    for s in range(STEPS):
      batch = {k: jax.device_put(jnp.asarray(v), batch_sh) for k, v in packed_batch(s).items()}
      state, m = fn(state, batch)
      losses.append(float(m["loss"]))  # blocks each step (jax 0.10.2 CPU collectives need it)
  return losses, state


@pytest.fixture(scope="module")
def reference():
  return run_on((1, 1, 1))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_losses_equal_across_meshes(reference, shape, capfd):
  assert jax.device_count() >= 8
  ref_losses, ref_state = reference
  capfd.readouterr()
  losses, state = run_on(shape)
  # No activation is resharded by replicating it whole first (XLA logs this while compiling the step).
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  # Parameters and Adam moments really are sharded as the rules say.
  layer = state.params["model"]["layers"][0]
  data, fsdp, tensor = shape
  want = ("fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None)
  assert spec(layer["mlp"]["gate_proj"]["kernel"]) == want
  assert spec(layer["self_attn"]["q_proj"]["kernel"]) == want
  assert spec(layer["mlp"]["down_proj"]["kernel"]) == want[::-1]
  mu = state.opt_state[1][0].mu["model"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
  assert spec(mu) == want
