"""Context parallelism (`mesh.context`): a row's sequence split over 2, 4 or 8 of the 8 fake devices gives the
losses and gradients of the unsplit row, with packed segments and sliding windows that cross the shard
boundaries; both ways of bringing K/V (all-gather, ring) equal the dense path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import Config, ConfigError, OptimCfg, default_config
from jaxtune.models import ModelConfig, build_model
from jaxtune.models import attention_kernels as kernels
from jaxtune.models import context_attention as cp
from jaxtune.train.loss import model_xent
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step
from tests.helpers.hf_models import hf_config, packed_batch
from tests.models.test_attention_impl import qkv, xla_attention

T = 64
# Segments of 13, 29, 17 tokens (+ padding) and 40, 21: at context 8 (8-token shards) every segment spans
# several shards; gemma2's sliding window of 8 reaches back across a shard boundary from every query.
LENGTHS = [[13, 29, 17], [40, 21]]
MESHES = {2: dict(data=1, fsdp=2, tensor=2), 4: dict(data=2, fsdp=1, tensor=1), 8: dict(data=1, fsdp=1, tensor=1)}


def mesh_for(context: int):
  m = MESHES[context]
  n = m["data"] * m["fsdp"] * m["tensor"] * context
  return mesh_lib.make_mesh(m["data"], m["fsdp"], m["tensor"], devices=jax.devices()[:n], context=context)


def weighted_sum(out):
  return (out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))).sum()


@pytest.mark.parametrize("context", [2, 4, 8])
@pytest.mark.parametrize("impl", cp.IMPLS)
def test_attention_equals_dense(context, impl):
  """Values and q/k/v gradients of the sharded attention (window 30, softcap, GQA, 8-token blocks) equal the
  dense path on the whole row."""
  q, k, v = qkv(B=2, T=96, N=4, K=2, H=16)
  seg = jnp.asarray(packed_batch([[20, 33, 30], [50, 40]], 96, 10)[2])
  opts = dict(scale=0.2, window=30, softcap=2.0)

  def fwd_bwd(f):
    return jax.jit(jax.value_and_grad(lambda q, k, v: weighted_sum(f(q, k, v)), argnums=(0, 1, 2)))

  ref_loss, ref_grads = fwd_bwd(lambda q, k, v: xla_attention(q, k, v, seg, **opts))(q, k, v)
  mesh = mesh_for(context)
  with jax.set_mesh(mesh):
    out = jax.jit(lambda q, k, v: kernels.context_parallel_attention(q, k, v, seg, block=8, impl=impl, **opts))(
        q, k, v)
    loss, grads = fwd_bwd(lambda q, k, v: kernels.context_parallel_attention(q, k, v, seg, block=8, impl=impl,
                                                                             **opts))(q, k, v)
  ref = xla_attention(q, k, v, seg, **opts)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * float(jnp.abs(r).max()))


# -- whole model: loss and gradients ----------------------------------------------------
def batch(cfg):
  ids, pos, seg = packed_batch(LENGTHS, T, cfg.vocab_size, seed=1)
  loss_mask = (np.random.RandomState(2).rand(*ids.shape) < 0.7).astype(np.int32) * (seg > 0)
  return {"input_ids": ids, "positions": pos, "segment_ids": seg, "loss_mask": loss_mask}


def loss_and_grads(cfg, context: int | None, loss_chunk: int = 0):
  """(loss, grads) of the model on the batch: on one device (context None), or on a mesh with `context`."""
  mesh = mesh_for(context) if context else mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  b = batch(cfg)
  with jax.set_mesh(mesh):
    model = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, mesh_lib.state_shardings(params, mesh))
    bsh = mesh_lib.batch_sharding(mesh)
    b = {k: jax.device_put(jnp.asarray(v), bsh) for k, v in b.items()}

    def loss(p, b):
      s, n = model_xent(nnx.merge(graphdef, p), b, loss_chunk)
      return s / n
    return jax.jit(jax.value_and_grad(loss))(params, b)


@pytest.fixture(scope="module", params=["llama", "gemma2"])
def family(request):
  cfg = ModelConfig.from_hf(hf_config(request.param).to_dict())
  return cfg, loss_and_grads(cfg, None)


@pytest.mark.parametrize("context", [2, 4, 8])
def test_model_loss_and_gradients_equal_context_1(family, context):
  cfg, (ref_loss, ref_grads) = family
  loss, grads = loss_and_grads(cfg, context)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * float(jnp.abs(r).max()),
                               err_msg=jax.tree_util.keystr(path))


def test_chunked_loss_under_context_equals_context_1(family):
  """train.loss_chunk under context 4: chunks of 5 positions of each 16-token slice (the last one padded)."""
  cfg, (ref_loss, ref_grads) = family
  loss, grads = loss_and_grads(cfg, 4, loss_chunk=5)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * float(jnp.abs(r).max()))


def test_ring_model_equals_context_1(monkeypatch):
  """The whole model with the non-default K/V exchange at context 4 (ring vs all-gather are both tested above)."""
  other = next(i for i in cp.IMPLS if i != cp.DEFAULT_IMPL)
  monkeypatch.setattr(cp, "DEFAULT_IMPL", other)
  cfg = ModelConfig.from_hf(hf_config("mistral").to_dict())
  (ref_loss, ref_grads), (loss, grads) = loss_and_grads(cfg, None), loss_and_grads(cfg, 4)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * float(jnp.abs(r).max()))


def test_activations_are_sharded_over_context():
  """Inside the step the batch rows are split along the sequence: each device holds T/context tokens."""
  mesh = mesh_for(4)
  sh = mesh_lib.batch_sharding(mesh)
  assert sh.shard_shape((4, T)) == (2, T // 4)
  assert mesh_lib.context_axis(mesh) is not None and mesh_lib.context_size(mesh) == 4
  assert mesh_lib.context_axis(mesh_lib.make_mesh(8, 1, 1)) is None


def test_train_steps_compose_with_data_fsdp_tensor():
  """Three optimizer steps on (data 1, fsdp 2, context 2, tensor 2) give the losses of one device."""
  cfg = ModelConfig.from_hf(hf_config("qwen3").to_dict())
  b = batch(cfg)

  def losses(mesh):
    with jax.set_mesh(mesh):
      model = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="blockwise")
      params = nnx.state(model, nnx.Param)
      nnx.update(model, jax.device_put(params, mesh_lib.state_shardings(params, mesh)))
      tx, schedule = make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0), 3)
      graphdef, state = init_state(model, tx)
      bsh = mesh_lib.batch_sharding(mesh)
      fn = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), bsh)
      out = []
      for _ in range(3):
        state, m = fn(state, {k: jax.device_put(jnp.asarray(v), bsh) for k, v in b.items()})
        out.append(float(m["loss"]))  # blocks each step (jax 0.10.2 CPU collectives)
    return out

  ref = losses(mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  got = losses(mesh_for(2))
  assert ref[2] < ref[0]
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_config_key_and_seq_len_check():
  from jaxtune.train.setup import check_batch
  d = default_config().to_dict()
  assert d["mesh"]["context"] == 1
  d["mesh"].update(data=1, context=4)
  d["data"]["seq_len"] = 30
  cfg = Config.from_dict(d)
  with pytest.raises(ConfigError, match="data.seq_len"):
    check_batch(cfg, mesh_lib.mesh_from_cfg(cfg.mesh))
