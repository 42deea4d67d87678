"""CausalLM built from scratch: params, axes, causality, remat, dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.mesh import RULES
from jaxtune.models import ModelConfig, build_model
from jaxtune.models.transformer import REMAT_POLICIES
from jaxtune.weights.tables import hf_key
from tests.helpers.hf_models import FAMILIES, hf_config

CFGS = {f: ModelConfig.from_hf(hf_config(f).to_dict()) for f in FAMILIES}


@pytest.fixture(autouse=True)
def strict_rank_promotion():
  """The model must not rely on implicit rank promotion."""
  with jax.numpy_rank_promotion("raise"):
    yield


def flat_params(model):
  return [(p, v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("family", FAMILIES)
def test_params_axes_names_and_init(family):
  cfg = CFGS[family]
  model = build_model(cfg, rngs=nnx.Rngs(0))
  params = flat_params(model)
  assert sum(v.get_value().size for _, v in params) == cfg.num_params
  for path, v in params:
    axes = v.get_metadata()["logical_axes"]
    x = np.asarray(v.get_value())
    assert len(axes) == x.ndim and set(axes) <= set(RULES), (path, axes)
    hf_key(family, path)  # every param has an HF name
    name = path[-1]
    if name in ("kernel", "embedding"):
      assert 0.015 < x.std() < 0.025, path
    elif name == "bias":
      assert not x.any(), path
    else:
      assert (x == (0.0 if cfg.norm_plus_one else 1.0)).all(), path
  assert (model.lm_head is None) == cfg.tie_word_embeddings


def test_causal_and_segment_isolation():
  model = build_model(CFGS["gemma2"], rngs=nnx.Rngs(1))  # softcap path, sliding + global layers
  rng = np.random.RandomState(0)
  ids = rng.randint(0, 160, (1, 20)).astype(np.int32)
  later = ids.copy()
  later[:, 12:] = rng.randint(0, 160, (1, 8))
  a, b = model(jnp.asarray(ids)), model(jnp.asarray(later))
  np.testing.assert_array_equal(np.asarray(a[:, :12]), np.asarray(b[:, :12]))
  assert not np.allclose(np.asarray(a[:, 12:]), np.asarray(b[:, 12:]))
  # the second segment does not see the first one
  seg = np.array([[1] * 8 + [2] * 12], np.int32)
  pos = np.array([list(range(8)) + list(range(12))], np.int32)
  other = ids.copy()
  other[:, :8] = rng.randint(0, 160, (1, 8))
  x = model(jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(seg))
  y = model(jnp.asarray(other), jnp.asarray(pos), jnp.asarray(seg))
  np.testing.assert_allclose(np.asarray(x[:, 8:]), np.asarray(y[:, 8:]), rtol=0, atol=1e-6)
  alone = model(jnp.asarray(ids[:, 8:]))
  np.testing.assert_allclose(np.asarray(x[:, 8:]), np.asarray(alone), rtol=0, atol=1e-5)


def _loss_and_grads(model, ids):
  graphdef, state = nnx.split(model)

  def loss(state):
    return nnx.merge(graphdef, state)(ids).astype(jnp.float32).std()

  return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_wraps_each_layer_with_its_policy_and_keeps_grads():
  cfg = dataclasses.replace(CFGS["qwen3"], num_layers=2, layer_types=None)
  ids = jnp.asarray(np.random.RandomState(2).randint(0, 160, (2, 8)), jnp.int32)
  for remat, policy in REMAT_POLICIES.items():
    graphdef, state = nnx.split(build_model(cfg, rngs=nnx.Rngs(0), remat=remat))
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(ids))(state)
    policies = [e.params["policy"] for e in jaxpr.eqns if e.primitive.name in ("remat2", "checkpoint")]
    assert policies == ([] if remat == "none" else [policy] * cfg.num_layers), remat
  ref_loss, ref_g = _loss_and_grads(build_model(cfg, rngs=nnx.Rngs(0)), ids)
  loss, g = _loss_and_grads(build_model(cfg, rngs=nnx.Rngs(0), remat="dots"), ids)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, ref_g)
  with pytest.raises(ValueError, match="remat"):
    build_model(cfg, rngs=nnx.Rngs(0), remat="sometimes")


def test_bfloat16_compute_and_params():
  cfg = CFGS["llama"]
  ids = jnp.asarray(np.random.RandomState(3).randint(0, 160, (2, 16)), jnp.int32)
  f32 = build_model(cfg, rngs=nnx.Rngs(0))
  bf = build_model(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
  mixed = bf.hidden_states(ids)
  assert mixed.dtype == jnp.bfloat16 and bf.model.embed_tokens.embedding[...].dtype == jnp.float32
  out = bf(ids)
  assert out.dtype == jnp.float32
  ref = f32(ids)
  assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) < 5e-2
  low = build_model(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert low.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  assert low(ids).dtype == jnp.float32


def test_attention_impl_xla_matches_default_and_positions_default():
  cfg = dataclasses.replace(CFGS["mistral"])
  ids = jnp.asarray(np.random.RandomState(4).randint(0, 160, (2, 24)), jnp.int32)
  a = build_model(cfg, rngs=nnx.Rngs(0))(ids)
  model = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
  np.testing.assert_array_equal(np.asarray(a), np.asarray(model(ids)))
  pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(model(ids, positions=pos, segment_ids=jnp.ones_like(ids))))
