"""Which attention implementation runs a layer, and the fast paths themselves.

`model.attention` names an implementation: `xla` (`jax.nn.dot_product_attention`
on a dense boolean mask, or the softcap einsum), `blockwise` (flash-style
attention in plain JAX, jaxtune/models/blockwise.py), `cudnn`, `splash`, or
`auto`, which picks per platform when the model is built (the platform of the
mesh in context, else the default backend) and per call:

- CPU: blockwise for packed rows (segment ids; every training batch), xla for
  unpacked ones. Measured (bench/blockwise_attention.py, bench/RESULTS.md):
  blockwise forward + backward is 2.2x (seq 512, 8 rows), 3x (2048) and 15x
  (8192) faster than the dense path on packed rows, with temporaries of
  60 MB / 30 MB / 120 MB instead of 338 MB / 649 MB / 10 GB. It is faster
  on unpacked rows too (1.7-2.6x), but those only occur outside training (eval
  of a whole row, generation's prefill goes through the cache path anyway).
- TPU: splash, the Pallas splash kernel; it handles every case we
  have (causal, packed segment ids, sliding windows, Gemma 2 softcap, GQA).
- GPU: cudnn where cuDNN expresses the layer's case natively; packed rows,
  which it cannot (below), run blockwise; other cases cuDNN refuses run xla.
  ROCm (no cuDNN) likewise: blockwise for packed rows, else xla.

cuDNN (`jax.nn.dot_product_attention(implementation="cudnn")`, same in jax 0.10
and 0.11) takes `is_causal`, `local_window_size` (left window only, with causal),
per-row trailing-padding lengths, and an arbitrary boolean `mask`. It has **no
segment ids**: a mask is turned into a dense additive bias [B, 1, T, T] whose
gradient the backward pass always computes, and cuDNN supports that gradient
only for some bias shapes depending on its version. So under `auto` a packed
row (segment_ids given, as every training batch has) runs blockwise, and only
unpacked causal / sliding-window rows run on cuDNN; an explicit `cudnn` sends
packed rows through the dense bias as asked. cuDNN also needs bfloat16/float16
inputs, head_dim a multiple of 8 and at most 256 (128 before Hopper), and has
no logit softcap: under `auto` such unpacked layers run on XLA, under `cudnn`
they raise.

`splash_interpret` (tests only) runs the splash kernel in Pallas interpret
mode, so the TPU kernel is checked against XLA on CPU.

Under a mesh whose context axis is larger than 1 (`mesh.context`: each row's
sequence split across devices) every full forward runs `context_parallel_attention`
instead: blockwise attention per shard, K/V gathered or passed around a ring.

The KV-cache `decode` path always runs on XLA (its mask is over cache slots).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxtune.errors import ConfigError

IMPLS = ("auto", "xla", "blockwise", "cudnn", "splash")  # model.attention values
TEST_IMPLS = ("splash_interpret",)  # the splash kernel in Pallas interpret mode, any platform
CUDNN_DTYPES = ("bfloat16", "float16")
SPLASH_LANES = 128  # splash blocks are multiples of this; T is padded up to one
# Blockwise attention's query/key block per platform: on CPU small blocks keep a block's scores in cache
# (fwd+bwd at seq 2048: 76 ms at 64, 90 ms at 128, 119 ms at 256, 232 ms at 512; bench/RESULTS.md); elsewhere
# large blocks feed the matrix units.
BLOCKWISE_BLOCK = {"cpu": 64}
BLOCKWISE_BLOCK_DEFAULT = 512


def current_platform() -> str:
  """Platform of the devices the model is built for: the mesh in context, else the default backend.

  "cpu", "gpu" (CUDA), "rocm" (AMD GPUs: no cuDNN, so `auto` runs XLA there) or "tpu"."""
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None)
  platform = device.platform if device is not None else jax.default_backend()
  if platform == "gpu" and "rocm" in str(getattr(jax.devices()[0].client, "platform_version", "")).lower():
    return "rocm"
  return platform


def cudnn_max_head_dim() -> int:
  """256 on Hopper or later, else 128 (cuDNN flash attention's head_dim limit)."""
  try:
    cc = jax.local_devices(backend="gpu")[0].compute_capability
    return 256 if tuple(int(x) for x in cc.split(".")) >= (9, 0) else 128
  except Exception:  # noqa: BLE001 - no CUDA device: the limit does not matter
    return 128


def cudnn_unsupported(*, dtype, head_dim: int, softcap: bool, segmented: bool, seq_len: int | None = None,
                      max_head_dim: int = 256, explicit: bool = False) -> str | None:
  """Why cuDNN cannot run this attention case (None: it can).

  With `explicit` (model.attention='cudnn') a packed row is allowed through a dense
  bias; under `auto` it is a reason to stay on XLA."""
  name = jnp.dtype(dtype).name
  if name not in CUDNN_DTYPES:
    return f"cuDNN flash attention needs bfloat16 or float16 inputs, got {name}"
  if head_dim % 8 or head_dim > max_head_dim:
    return f"cuDNN flash attention needs head_dim a multiple of 8 and <= {max_head_dim}, got {head_dim}"
  if softcap:
    return "cuDNN has no attention logit softcapping (Gemma 2)"
  if segmented and not explicit:
    return "cuDNN has no segment ids: a packed row's mask would be a dense [B, 1, T, T] bias"
  if segmented and seq_len is not None and seq_len % 2:
    return f"cuDNN attention with a mask (bias) needs an even sequence length, got {seq_len}"
  return None


def resolve_impl(requested: str | None, platform: str, *, dtype, head_dim: int, softcap: bool,
                 segmented: bool = False, seq_len: int | None = None, cudnn_head_dim_max: int = 256) -> str:
  """The implementation ("xla", "blockwise", "cudnn", "splash" or "splash_interpret") that runs one attention case.

  Pure: `platform` is "cpu", "gpu", "rocm" or "tpu". `auto` falls back to XLA silently where
  the platform's fast path cannot express the case; an explicit fast path raises,
  naming the reason."""
  if requested is None or requested == "xla":
    return "xla"
  if requested == "blockwise":
    return "blockwise"
  if requested == "auto":
    if platform == "tpu":
      return "splash"
    if platform == "gpu" and cudnn_unsupported(dtype=dtype, head_dim=head_dim, softcap=softcap, segmented=segmented,
                                               seq_len=seq_len, max_head_dim=cudnn_head_dim_max) is None:
      return "cudnn"
    return "blockwise" if segmented else "xla"
  if requested == "cudnn":
    if platform != "gpu":
      raise ConfigError(f"model.attention: attention implementation 'cudnn' needs a GPU, the model is built for "
                        f"{platform!r}")
    reason = cudnn_unsupported(dtype=dtype, head_dim=head_dim, softcap=softcap, segmented=segmented,
                               seq_len=seq_len, max_head_dim=cudnn_head_dim_max, explicit=True)
    if reason is not None:
      raise ConfigError(f"model.attention: attention implementation 'cudnn' cannot run this layer: {reason} "
                        "(model.attention='auto' falls back to blockwise or XLA for it)")
    return "cudnn"
  if requested == "splash":
    if platform != "tpu":
      raise ConfigError(f"model.attention: attention implementation 'splash' (a TPU Pallas kernel) needs a TPU, "
                        f"the model is built for {platform!r}")
    return "splash"
  if requested in TEST_IMPLS:
    return requested
  raise ConfigError(f"model.attention: attention implementation {requested!r} not in {IMPLS + TEST_IMPLS}")


# -- cuDNN ---------------------------------------------------------------------
def cudnn_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, scale: float, window: int | None,
                    implementation: str = "cudnn") -> jax.Array:
  """Causal attention on cuDNN; the window as cuDNN's left window, segments as a dense mask (bias).

  `implementation="xla"` runs the same call on XLA (how the translation is tested without a GPU)."""
  T = q_BTNH.shape[1]
  mask = None
  if segment_ids_BT is not None:
    mask = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
  local = (window - 1, 0) if window is not None and window < T else None  # a query sees itself + window-1 before
  return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask, scale=scale, is_causal=True,
                                      local_window_size=local, implementation=implementation)


# -- Splash (TPU Pallas) -------------------------------------------------------
def splash_block(T: int) -> int:
  """The splash block size for a (padded) length T: the largest of 512, 256, 128 dividing it."""
  return next(b for b in (512, 256, SPLASH_LANES) if T % b == 0)


@functools.lru_cache(maxsize=64)
def _splash_kernel(T: int, N: int, window: int | None, softcap: float | None, block: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  if window is None or window >= T:
    head_mask = sa.CausalMask((T, T))
  else:
    head_mask = sa.LocalMask((T, T), window_size=(window - 1, 0), offset=0)  # causal within the window
  b = block
  sizes = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                        block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
  # Built outside any trace so that the cached kernel holds concrete mask-info arrays.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(sa.MultiHeadMask([head_mask] * N), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              attn_logits_soft_cap=softcap, interpret=interpret)


def _splash_local(q_BNTH, k_BKTH, v_BKTH, seg_BT, *, window, softcap, interpret):
  """Splash over local (per-shard) arrays: one kernel, vmapped over the batch."""
  from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
  _, N, T, _ = q_BNTH.shape
  kernel = _splash_kernel(T, N, window, softcap, splash_block(T), interpret)
  if seg_BT is None:
    return jax.vmap(lambda q, k, v: kernel(q, k, v))(q_BNTH, k_BKTH, v_BKTH)
  return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(q_BNTH, k_BKTH, v_BKTH, seg_BT)


def _multi_device_mesh():
  """The abstract mesh in context when it spans more than one device, else None."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or math.prod(mesh.shape.values()) <= 1:
    return None
  return mesh


def _shard_specs(mesh, B: int, N: int, K: int):
  """(batch, heads) mesh axes for shard_map: batch over the batch axes, heads over the
  head axes when they divide both N and K (so every shard keeps whole GQA groups)."""
  from jaxtune.mesh import logical_to_spec
  batch_axes, heads_axes = logical_to_spec(("batch", "heads"), mesh)

  def size(axes):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)

  batch_axes = batch_axes if B % size(batch_axes) == 0 else None
  heads_axes = heads_axes if N % size(heads_axes) == 0 and K % size(heads_axes) == 0 else None
  return batch_axes, heads_axes


def splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, scale: float, window: int | None,
                     softcap: float | None, interpret: bool = False) -> jax.Array:
  """Causal (and segment / window / softcap) GQA attention with the splash kernel, [B, T, N, H].

  The kernel does not scale logits: q is scaled first (our scale is the layer's,
  not always 1/sqrt(H)). T is padded up to a multiple of 128 at the end; under
  causal masking no real query sees a padded key, and padded outputs are dropped.
  Under a mesh the kernel runs per shard (shard_map over batch and heads)."""
  from jax.sharding import PartitionSpec as P
  B, T, N, H = q_BTNH.shape
  K = k_BTKH.shape[2]
  Tp = -(-T // SPLASH_LANES) * SPLASH_LANES
  pad = [(0, 0), (0, Tp - T), (0, 0), (0, 0)]
  q_BNTH = jnp.pad(q_BTNH * jnp.asarray(scale, q_BTNH.dtype), pad).transpose(0, 2, 1, 3)
  k_BKTH = jnp.pad(k_BTKH, pad).transpose(0, 2, 1, 3)
  v_BKTH = jnp.pad(v_BTKH, pad).transpose(0, 2, 1, 3)
  seg_BT = None if segment_ids_BT is None else jnp.pad(segment_ids_BT.astype(jnp.int32), [(0, 0), (0, Tp - T)])
  args = (q_BNTH, k_BKTH, v_BKTH) + (() if seg_BT is None else (seg_BT,))

  def local(q, k, v, seg=None):
    return _splash_local(q, k, v, seg, window=window, softcap=softcap, interpret=interpret)

  mesh = _multi_device_mesh()
  if mesh is not None:
    batch_axes, heads_axes = _shard_specs(mesh, B, N, K)
    specs = (P(batch_axes, heads_axes, None, None),) * 3 + (() if seg_BT is None else (P(batch_axes, None),))
    local = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)
  out_BNTH = local(*args)
  return out_BNTH.transpose(0, 2, 1, 3)[:, :T]


# -- Blockwise (plain JAX) -----------------------------------------------------
def blockwise_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, scale: float, window: int | None,
                        softcap: float | None, block: int) -> jax.Array:
  """Causal (and segment / window / softcap) GQA attention computed block by block, [B, T, N, H].

  Under a mesh it runs per shard (shard_map over batch and heads, like splash), so that no partitioner
  decision can gather a block loop's operands."""
  from jax.sharding import PartitionSpec as P

  from jaxtune.models.blockwise import blockwise_attention as local_attention
  B, _, N, _ = q_BTNH.shape
  K = k_BTKH.shape[2]

  def local(q, k, v, seg=None):
    return local_attention(q, k, v, seg, scale=scale, window=window, softcap=softcap, block_q=block, block_k=block)

  args = (q_BTNH, k_BTKH, v_BTKH) + (() if segment_ids_BT is None else (segment_ids_BT,))
  mesh = _multi_device_mesh()
  if mesh is not None:
    batch_axes, heads_axes = _shard_specs(mesh, B, N, K)
    specs = (P(batch_axes, None, heads_axes, None),) * 3 + (() if segment_ids_BT is None else (P(batch_axes, None),))
    local = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)
  return local(*args)


def blockwise_block(platform: str) -> int:
  return BLOCKWISE_BLOCK.get(platform, BLOCKWISE_BLOCK_DEFAULT)


def context_parallel_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, scale: float, window: int | None,
                               softcap: float | None, block: int, impl: str | None = None) -> jax.Array:
  """Attention of rows whose sequence is sharded over the mesh's context axis (jaxtune/models/context_attention.py):
  per shard over batch, heads and sequence, K/V brought from the other sequence shards."""
  from jaxtune.mesh import context_axis
  from jaxtune.models import context_attention as cp
  mesh = _multi_device_mesh()
  B, _, N, _ = q_BTNH.shape
  batch_axes, heads_axes = _shard_specs(mesh, B, N, k_BTKH.shape[2])
  return cp.context_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, mesh=mesh, context_axis=context_axis(mesh),
                              batch_axes=batch_axes, heads_axes=heads_axes, scale=scale, window=window,
                              softcap=softcap, block=block, impl=impl or cp.DEFAULT_IMPL)
