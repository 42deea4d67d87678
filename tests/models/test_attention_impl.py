"""Attention implementations: the per-platform choice, and each fast path equal to the XLA path.

The splash kernel runs in Pallas interpret mode on CPU, so its masks, padding,
GQA, softcap, scale and backward pass are checked here; so are the arguments the
cuDNN path passes (run on XLA). cuDNN itself needs a GPU: `bench/attention.py
--impl cudnn` checks it against XLA (values and gradients) and times both.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.config import Config, ConfigError, default_config
from jaxtune.mesh import make_mesh
from jaxtune.models import ModelConfig, build_model
from jaxtune.models import attention_kernels as kernels
from jaxtune.models.attention import Attention, attention_mask, softcapped_attention
from tests.helpers.hf_models import hf_config


def qkv(B=2, T=128, N=4, K=2, H=64, seed=0, dtype=jnp.float32):
  rng = np.random.RandomState(seed)
  q_BTNH = jnp.asarray(rng.randn(B, T, N, H), dtype)
  k_BTKH = jnp.asarray(rng.randn(B, T, K, H), dtype)
  v_BTKH = jnp.asarray(rng.randn(B, T, K, H), dtype)
  return q_BTNH, k_BTKH, v_BTKH


def packed_segments(B: int, T: int) -> jax.Array:
  """Row 0: three examples then padding (id 0); row 1: one example then padding; others: one full example."""
  seg_BT = np.ones((B, T), np.int32)
  cuts = [0, T * 3 // 10, T * 6 // 10, T * 9 // 10]
  for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
    seg_BT[0, a:b] = i + 1
  seg_BT[0, cuts[-1]:] = 0
  if B > 1:
    seg_BT[1, T * 3 // 4:] = 0
  return jnp.asarray(seg_BT)


def positions(seg_BT: np.ndarray) -> np.ndarray:
  """Positions restarting at 0 at every segment start."""
  pos_BT = np.zeros_like(seg_BT)
  for b in range(seg_BT.shape[0]):
    for t in range(1, seg_BT.shape[1]):
      pos_BT[b, t] = pos_BT[b, t - 1] + 1 if seg_BT[b, t] == seg_BT[b, t - 1] else 0
  return pos_BT


def xla_attention(q_BTNH, k_BTKH, v_BTKH, seg_BT, *, scale, window, softcap):
  """The XLA path of `Attention.__call__`."""
  mask = attention_mask(seg_BT, q_BTNH.shape[1], window)
  if softcap is not None:
    return softcapped_attention(q_BTNH, k_BTKH, v_BTKH, mask, scale=scale, softcap=softcap)
  return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask, scale=scale, is_causal=True)


def splash(q_BTNH, k_BTKH, v_BTKH, seg_BT, *, scale, window, softcap):
  return kernels.splash_attention(q_BTNH, k_BTKH, v_BTKH, seg_BT, scale=scale, window=window, softcap=softcap,
                                  interpret=True)


CASES = {  # name: (qkv kwargs, packed, scale, window, softcap)
    "causal": (dict(N=2, K=2), False, 0.125, None, None),
    "packed": (dict(N=2, K=2), True, 0.125, None, None),
    "window": (dict(N=2, K=2), True, 0.125, 37, None),
    "softcap": (dict(N=2, K=2), True, 0.125, None, 2.0),
    "gqa": (dict(N=4, K=2), True, 0.125, None, None),
    "scale": (dict(N=2, K=2), True, 24 ** -0.5, None, None),  # Gemma's query_pre_attn_scalar, not 1/sqrt(H)
    "all_padded_T": (dict(T=200, N=4, K=2, H=128), True, 0.07, 50, 3.0),  # T padded to 256
}


@pytest.mark.parametrize("name", CASES)
def test_splash_equals_xla(name):
  kw, packed, scale, window, softcap = CASES[name]
  q, k, v = qkv(**kw)
  seg = packed_segments(q.shape[0], q.shape[1]) if packed else None
  opts = dict(scale=scale, window=window, softcap=softcap)
  out = jax.jit(lambda q, k, v, s: splash(q, k, v, s, **opts))(q, k, v, seg)
  ref = xla_attention(q, k, v, seg, **opts)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)


def _loss(f, **opts):
  def loss(q, k, v, seg):
    out = f(q, k, v, seg, **opts)
    return (out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))).sum()
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def test_splash_gradients_equal_xla():
  q, k, v = qkv(T=128, N=4, K=2)
  seg = packed_segments(2, 128)
  opts = dict(scale=0.1, window=40, softcap=2.0)
  (l1, g1), (l2, g2) = _loss(splash, **opts)(q, k, v, seg), _loss(xla_attention, **opts)(q, k, v, seg)
  np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_splash_sharded_over_batch_and_heads():
  """Under a (data=2, tensor=2) mesh the kernel runs per shard and still equals XLA."""
  q, k, v = qkv(B=4, T=128, N=4, K=2)
  seg = jnp.concatenate([packed_segments(2, 128)] * 2)
  opts = dict(scale=0.1, window=40, softcap=None)
  with jax.set_mesh(make_mesh(2, 1, 2, devices=jax.devices()[:4])):
    out = jax.jit(lambda q, k, v, s: splash(q, k, v, s, **opts))(q, k, v, seg)
    ref = jax.jit(lambda q, k, v, s: xla_attention(q, k, v, s, **opts))(q, k, v, seg)
    assert kernels._shard_specs(jax.sharding.get_abstract_mesh(), 4, 4, 2) == ("data", "tensor")
    assert kernels._shard_specs(jax.sharding.get_abstract_mesh(), 4, 4, 1) == ("data", None)  # K=1: heads whole
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)


def test_splash_block_sizes():
  assert [kernels.splash_block(t) for t in (128, 256, 384, 512, 640, 1024, 4096)] == [128, 256, 128, 512, 128,
                                                                                       512, 512]


@pytest.mark.parametrize("packed, window", [(False, None), (False, 37), (True, None), (True, 37)])
def test_cudnn_call_translates_our_masks(packed, window):
  """The arguments the cuDNN path passes (left window, segment mask, causal), run on XLA, equal our dense-mask
  path: what cuDNN is asked to compute is right (bench/attention.py --impl cudnn checks cuDNN computes it, on a GPU)."""
  q, k, v = qkv(B=2, T=128, N=4, K=2, H=64)
  seg = packed_segments(2, 128) if packed else None
  out = kernels.cudnn_attention(q, k, v, seg, scale=0.2, window=window, implementation="xla")
  ref = xla_attention(q, k, v, seg, scale=0.2, window=window, softcap=None)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-6)


# -- choosing the implementation ------------------------------------------------
CASE = dict(dtype=jnp.bfloat16, head_dim=128, softcap=False, segmented=False, seq_len=2048)


def resolve(requested, platform, **over):
  return kernels.resolve_impl(requested, platform, **{**CASE, **over})


def test_resolve_cpu():
  assert resolve("auto", "cpu") == "xla"
  assert resolve(None, "cpu") == resolve("xla", "cpu") == "xla"
  assert resolve("splash_interpret", "cpu") == "splash_interpret"
  with pytest.raises(ValueError, match="needs a GPU"):
    resolve("cudnn", "cpu")
  with pytest.raises(ValueError, match="needs a TPU"):
    resolve("splash", "cpu")
  with pytest.raises(ValueError, match="not in"):
    resolve("flash", "cpu")


def test_resolve_tpu():
  for over in ({}, dict(dtype=jnp.float32), dict(softcap=True), dict(segmented=True), dict(head_dim=256)):
    assert resolve("auto", "tpu", **over) == "splash"
  assert resolve("splash", "tpu") == "splash"
  assert resolve("xla", "tpu") == "xla"
  with pytest.raises(ValueError, match="needs a GPU"):
    resolve("cudnn", "tpu")


@pytest.mark.parametrize("over, reason", [
    (dict(dtype=jnp.float32), "bfloat16 or float16"),
    (dict(head_dim=100), "multiple of 8"),
    (dict(head_dim=256, cudnn_head_dim_max=128), "<= 128"),
    (dict(softcap=True), "softcapping"),
])
def test_resolve_gpu_falls_back_or_raises(over, reason):
  assert resolve("auto", "gpu", **over) == "xla"
  with pytest.raises(ValueError, match=reason):
    resolve("cudnn", "gpu", **over)


def test_resolve_rocm_stays_on_xla():
  assert resolve("auto", "rocm") == "xla"
  with pytest.raises(ValueError, match="needs a GPU"):
    resolve("cudnn", "rocm")


def test_resolve_gpu_supported_cases():
  assert resolve("auto", "gpu") == "cudnn"
  assert resolve("auto", "gpu", dtype=jnp.float16, head_dim=256) == "cudnn"
  assert resolve("xla", "gpu") == "xla"
  # A packed row needs a dense bias on cuDNN: auto runs it blockwise (issue 14), an explicit cudnn takes the bias.
  assert resolve("auto", "gpu", segmented=True) == "blockwise"
  assert resolve("cudnn", "gpu", segmented=True) == "cudnn"
  with pytest.raises(ValueError, match="even sequence length"):
    resolve("cudnn", "gpu", segmented=True, seq_len=2047)


def test_attention_layer_checks_an_explicit_impl_at_build():
  cfg = ModelConfig.from_hf(hf_config("llama").to_dict())
  with pytest.raises(ValueError, match="needs a GPU"):
    Attention(cfg, 0, rngs=nnx.Rngs(0), attention_impl="cudnn")
  assert Attention(cfg, 0, rngs=nnx.Rngs(0), attention_impl="auto").platform == "cpu"


def test_config_key():
  assert default_config().model.attention == "auto"
  d = default_config().to_dict()
  d["model"]["attention"] = "splash"
  assert Config.from_dict(d).model.attention == "splash"
  d["model"]["attention"] = "flash"
  with pytest.raises(ConfigError, match="model.attention"):
    Config.from_dict(d)


# -- whole model ----------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_model_splash_equals_xla(family):
  """A tiny model (GQA 4/2; gemma2: softcap, sliding window 8, scale 24^-0.5) on a packed batch."""
  cfg = ModelConfig.from_hf(hf_config(family).to_dict())
  ref_model = build_model(cfg, rngs=nnx.Rngs(0))
  model = build_model(cfg, rngs=nnx.Rngs(0), attention_impl="splash_interpret")
  B, T = 2, 40
  seg = packed_segments(B, T)
  pos = jnp.asarray(positions(np.asarray(seg)))
  ids = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (B, T)), jnp.int32)
  out = nnx.jit(lambda m, i, p, s: m(i, p, s))(model, ids, pos, seg)
  ref = nnx.jit(lambda m, i, p, s: m(i, p, s))(ref_model, ids, pos, seg)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
