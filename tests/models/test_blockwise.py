"""Blockwise attention equals the dense XLA path: values and q/k/v gradients at float32, per mask case, with
blocks small enough that every case spans several of them; and whole models on it equal models on XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import ModelConfig, build_model
from jaxtune.models import attention_kernels as kernels
from jaxtune.models import blockwise
from jaxtune.models.blockwise import blockwise_attention
from jaxtune.train.loss import model_xent
from tests.helpers.hf_models import hf_config, packed_batch
from tests.models.test_attention_impl import packed_segments, qkv, xla_attention

CASES = {  # name: (qkv kwargs, segments, scale, window, softcap, block_q, block_k)
    "causal": (dict(T=128, N=2, K=2), None, 0.125, None, None, 32, 32),
    "packed": (dict(T=128, N=2, K=2), "packed", 0.125, None, None, 32, 32),
    # a window of 37 crosses the 16-token key blocks at every offset; T=100 is not a multiple of either block
    "window_crossing_blocks": (dict(T=100, N=2, K=2), "packed", 0.125, 37, None, 32, 16),
    "window_unpacked": (dict(T=96, N=2, K=2), None, 0.125, 20, None, 16, 32),
    "softcap": (dict(T=128, N=2, K=2), "packed", 0.125, None, 2.0, 32, 32),
    "gqa": (dict(T=128, N=6, K=2), "packed", 0.125, None, None, 32, 32),
    "mqa_all": (dict(T=130, N=4, K=1, H=24), "packed", 24 ** -0.5, 40, 3.0, 64, 16),
    # segments that end mid-block and a padding tail (segment 0) longer than a block
    "segments_mid_block": (dict(T=120, N=2, K=1), [7, 30, 1, 50], 0.2, None, None, 16, 16),
    "one_block": (dict(T=40, N=2, K=2), "packed", 0.125, 8, 2.0, 512, 512),
}


def segments(spec, B, T):
  if spec is None:
    return None
  if spec == "packed":
    return packed_segments(B, T)
  _, _, seg = packed_batch([spec] * B, T, vocab=10)
  return jnp.asarray(seg)


def weighted_sum(out):
  return (out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))).sum()


def run_case(name):
  kw, seg_spec, scale, window, softcap, bq, bk = CASES[name]
  q, k, v = qkv(**kw)
  seg = segments(seg_spec, q.shape[0], q.shape[1])
  opts = dict(scale=scale, window=window, softcap=softcap)

  def fwd_bwd(f):
    return jax.jit(jax.value_and_grad(lambda q, k, v: weighted_sum(f(q, k, v)), argnums=(0, 1, 2)))

  out = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, seg, block_q=bq, block_k=bk, **opts))(q, k, v)
  ref = xla_attention(q, k, v, seg, **opts)
  grads = fwd_bwd(lambda q, k, v: blockwise_attention(q, k, v, seg, block_q=bq, block_k=bk, **opts))(q, k, v)[1]
  ref_grads = fwd_bwd(lambda q, k, v: xla_attention(q, k, v, seg, **opts))(q, k, v)[1]
  return out, ref, grads, ref_grads


@pytest.mark.parametrize("name", CASES)
def test_blockwise_equals_dense(name):
  out, ref, grads, ref_grads = run_case(name)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
  for g, r, what in zip(grads, ref_grads, "qkv"):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5 * float(jnp.abs(r).max()),
                               err_msg=f"d{what}")


def test_block_bounds_skip_what_the_masks_rule_out():
  """The causal and window bounds visit exactly the key blocks a query block can see: with 16-token blocks
  and a window of 20, query block 5 (tokens 80-95) sees keys 61-95, i.e. key blocks 3, 4, 5."""
  spec = blockwise.Spec(scale=1.0, window=20, block_q=16, block_k=16)
  lo, hi = blockwise._kv_range(5, spec, 8, 0, 0)
  assert (int(lo), int(hi)) == (3, 6)
  lo, hi = blockwise._q_range(3, spec, 8, 0, 0, 128)  # key block 3 (48-63) is seen by queries 48-82
  assert (int(lo), int(hi)) == (3, 6)
  causal = blockwise.Spec(scale=1.0, block_q=16, block_k=16)
  assert [int(x) for x in blockwise._kv_range(2, causal, 8, 0, 0)] == [0, 3]
  assert [int(x) for x in blockwise._q_range(2, causal, 8, 0, 0, 128)] == [2, 8]
  # a KV chunk entirely after the queries (another device's, in context parallelism) is not visited at all
  assert [int(x) for x in blockwise._kv_range(7, causal, 8, 0, 128)] == [0, 0]
  assert [int(x) for x in blockwise._q_range(0, causal, 8, 0, 128, 128)] == [8, 8]


def test_segment_ranges_skip_disjoint_blocks():
  """Blocks whose segment-id ranges are disjoint in every row are skipped; one row that overlaps keeps them."""
  seg = jnp.asarray([[1] * 16 + [2] * 16, [1] * 16 + [2] * 16])
  rng = blockwise._seg_ranges(seg, 16)
  assert not bool(blockwise._seg_overlap(rng, rng, 1, 0))
  assert bool(blockwise._seg_overlap(rng, rng, 1, 1))
  mixed = jnp.asarray([[1] * 16 + [2] * 16, [1] * 32])
  rng = blockwise._seg_ranges(mixed, 16)
  assert bool(blockwise._seg_overlap(rng, rng, 1, 0))


def test_bfloat16_close_to_dense():
  q, k, v = qkv(T=128, N=4, K=2, dtype=jnp.bfloat16)
  seg = packed_segments(2, 128)
  out = blockwise_attention(q, k, v, seg, scale=0.125, window=50, block_q=32, block_k=32)
  ref = xla_attention(q, k, v, seg, scale=0.125, window=50, softcap=None)
  assert out.dtype == jnp.bfloat16
  err = float(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32)).max())
  assert err < 2e-2 * float(jnp.abs(ref.astype(jnp.float32)).max())


def test_resolve_auto_runs_packed_rows_blockwise():
  case = dict(dtype=jnp.bfloat16, head_dim=128, softcap=False, seq_len=2048)
  for platform in ("cpu", "gpu", "rocm"):
    assert kernels.resolve_impl("auto", platform, segmented=True, **case) == "blockwise"
    assert kernels.resolve_impl("blockwise", platform, segmented=False, **case) == "blockwise"
  assert kernels.resolve_impl("auto", "tpu", segmented=True, **case) == "splash"


# -- whole model ----------------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gemma2"])
def models(request):
  """A tiny model on XLA and the same weights on blockwise (llama: GQA 4/2; gemma2: softcap, sliding window 8,
  scale 24^-0.5, alternating layers), with blocks of 8 so that the 40-token rows span five of them."""
  cfg = ModelConfig.from_hf(hf_config(request.param).to_dict())
  ref = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="xla")
  model = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="blockwise")
  return cfg, ref, model


def batch(cfg, T=40):
  ids, pos, seg = packed_batch([[9, 17, 11], [30, 3]], T, cfg.vocab_size)
  loss_mask = (np.arange(T)[None] % 3 != 0).astype(np.int32) * (seg > 0)
  return {"input_ids": jnp.asarray(ids), "positions": jnp.asarray(pos), "segment_ids": jnp.asarray(seg),
          "loss_mask": jnp.asarray(loss_mask)}


def test_model_logits_and_loss_gradients_equal_xla(models, monkeypatch):
  cfg, ref, model = models
  monkeypatch.setitem(kernels.BLOCKWISE_BLOCK, "cpu", 8)
  b = batch(cfg)

  def loss_and_grads(m):
    graphdef, params = nnx.split(m, nnx.Param)

    def loss(p):
      s, n = model_xent(nnx.merge(graphdef, p), b)
      return s / n
    return jax.jit(jax.value_and_grad(loss))(params)

  logits = nnx.jit(lambda m: m(b["input_ids"], b["positions"], b["segment_ids"]))(model)
  ref_logits = nnx.jit(lambda m: m(b["input_ids"], b["positions"], b["segment_ids"]))(ref)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=0, atol=1e-5)
  (l1, g1), (l2, g2) = loss_and_grads(model), loss_and_grads(ref)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
  for a, r in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=0, atol=1e-5 * max(float(jnp.abs(r).max()), 1e-6))
