"""Attention over a sequence sharded across devices (context parallelism, `mesh.context`).

Every device holds T/C consecutive tokens of each row (C = the context axis size)
for q, k, v and the segment ids. Queries stay put; each needs the keys of its own
and every earlier chunk. Two ways to bring them, both exact (the masks use global
indices, so segments and sliding windows cross shard boundaries as in one piece):

- `all_gather`: gather K, V and the key segment ids of the whole row over the
  context axis, then run blockwise attention (jaxtune/models/blockwise.py) of the
  local queries over them, offset to their global index. The backward pass is
  blockwise's, and the K/V gradients are reduce-scattered back (all_gather's
  transpose). Holds the whole row's K/V per device (with GQA that is small: 64k
  tokens x 8 KV heads x 128 x bf16 = 128 MiB per layer for K and V together).
- `ring`: C steps; at each, a device attends its queries to the KV chunk it holds
  (blockwise's `chunk_forward`), merges the partial result by log-sum-exp, and
  passes the chunk to the next device (`ppermute`). The backward pass runs the ring
  again with the saved log-sum-exp (`chunk_backward`), the K/V gradients
  travelling with their chunk and arriving home after the last step. Holds two KV
  chunks per device.

Chunks wholly in a query chunk's future are not computed (blockwise's causal
bounds visit no block of them), so a device does work for its own and earlier
chunks only: the last device does the most (no load balancing across chunks yet).
`DEFAULT_IMPL` is the measured faster one (bench/context_attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxtune.models import blockwise

IMPLS = ("all_gather", "ring")
DEFAULT_IMPL = "all_gather"


def _all_gather_local(q, k, v, seg, *, axis: str, spec_kw: dict):
  """Per device: local queries [b, t, n, H] over the whole row's gathered K/V."""
  t = q.shape[1]
  offset = jax.lax.axis_index(axis) * t
  k_all = jax.lax.all_gather(k, axis, axis=1, tiled=True)
  v_all = jax.lax.all_gather(v, axis, axis=1, tiled=True)
  seg_all = None if seg is None else jax.lax.all_gather(seg, axis, axis=1, tiled=True)
  return blockwise.blockwise_attention(q, k_all, v_all, seg, kv_segment_ids_BS=seg_all, q_offset=offset,
                                       kv_offset=0, **spec_kw)


# -- ring ------------------------------------------------------------------------
def _ring_perm(C: int):
  return [(i, (i + 1) % C) for i in range(C)]


def _ring_forward(q, k, v, q_seg, k_seg, *, spec, S, axis, C):
  """(out [b, K, G, tp, H] float32, lse) of the local queries over every chunk, passed around the ring."""
  c = jax.lax.axis_index(axis)
  t = S

  def attend(s, kv):
    k_s, v_s, seg_s = kv
    src = (c - s) % C
    return blockwise.chunk_forward(q, k_s, v_s, q_seg, seg_s, spec=spec, S=S, q_offset=c * t, kv_offset=src * t)

  def merge(acc, part):
    (o_a, lse_a), (o_p, lse_p) = acc, part
    lse = jnp.logaddexp(lse_a, lse_p)
    lse_safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    w_a, w_p = jnp.exp(lse_a - lse_safe), jnp.exp(lse_p - lse_safe)  # 0 where a side saw nothing (-inf)
    return o_a * w_a[..., None] + o_p * w_p[..., None], lse

  def step(s, carry):
    acc, kv = carry
    acc = merge(acc, attend(s, kv))
    return acc, jax.lax.ppermute(kv, axis, _ring_perm(C))

  acc = attend(0, (k, v, k_seg))
  kv = jax.lax.ppermute((k, v, k_seg), axis, _ring_perm(C))
  acc, kv = jax.lax.fori_loop(1, C - 1, step, (acc, kv))
  return merge(acc, attend(C - 1, kv)) if C > 1 else acc


def _ring_backward(q, k, v, q_seg, k_seg, do, lse, delta, *, spec, S, axis, C):
  c = jax.lax.axis_index(axis)
  t = S

  def grads(s, kv):
    k_s, v_s, seg_s = kv
    src = (c - s) % C
    return blockwise.chunk_backward(q, k_s, v_s, q_seg, seg_s, do, lse, delta, spec=spec, S=S, q_offset=c * t,
                                    kv_offset=src * t)

  def step(s, carry):
    dq, kv, dkv = carry
    dq_s, dk_s, dv_s = grads(s, kv)
    dkv = (dkv[0] + dk_s, dkv[1] + dv_s)
    kv, dkv = jax.lax.ppermute((kv, dkv), axis, _ring_perm(C))
    return dq + dq_s, kv, dkv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq, kv, dkv = jax.lax.fori_loop(0, C - 1, step, (dq, (k, v, k_seg), (zeros, zeros)))
  dq_s, dk_s, dv_s = grads(C - 1, kv)
  dk, dv = jax.lax.ppermute((dkv[0] + dk_s, dkv[1] + dv_s), axis, _ring_perm(C))  # each chunk's grads go home
  return dq + dq_s, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _ring(q, k, v, q_seg, k_seg, spec, S, axis, C):
  out, _ = _ring_forward(q, k, v, q_seg, k_seg, spec=spec, S=S, axis=axis, C=C)
  return out.astype(q.dtype)


def _ring_fwd(q, k, v, q_seg, k_seg, spec, S, axis, C):
  out, lse = _ring_forward(q, k, v, q_seg, k_seg, spec=spec, S=S, axis=axis, C=C)
  out = out.astype(q.dtype)
  return out, (q, k, v, q_seg, k_seg, out, lse)


def _ring_bwd(spec, S, axis, C, res, do):
  q, k, v, q_seg, k_seg, out, lse = res
  dq, dk, dv = _ring_backward(q, k, v, q_seg, k_seg, do, lse, blockwise.delta(do, out), spec=spec, S=S, axis=axis,
                              C=C)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_ring.defvjp(_ring_fwd, _ring_bwd)


def _ring_local(q_BTNH, k_BTKH, v_BTKH, seg_BT, *, axis: str, C: int, spec_kw: dict):
  """Per device: local queries [b, t, n, H] over every device's chunk, in C ring steps."""
  _, t, _, _ = q_BTNH.shape
  K = k_BTKH.shape[2]
  spec = blockwise.Spec(scale=spec_kw["scale"], window=spec_kw["window"], softcap=spec_kw["softcap"],
                        block_q=blockwise.block_size(t, spec_kw["block_q"]),
                        block_k=blockwise.block_size(t, spec_kw["block_k"]))
  q = blockwise.group_q(q_BTNH, K, spec.block_q)
  k, v = blockwise.group_kv(k_BTKH, spec.block_k), blockwise.group_kv(v_BTKH, spec.block_k)
  q_seg, k_seg = blockwise.pad_segments(seg_BT, spec.block_q), blockwise.pad_segments(seg_BT, spec.block_k)
  return blockwise.ungroup(_ring(q, k, v, q_seg, k_seg, spec, t, axis, C), t)


# -- entry -----------------------------------------------------------------------
def context_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, *, mesh, context_axis: str, batch_axes, heads_axes,
                      scale: float, window: int | None, softcap: float | None, block: int,
                      impl: str = DEFAULT_IMPL) -> jax.Array:
  """Causal GQA attention [B, T, N, H] of a row sharded over `context_axis` along T (and over `batch_axes` /
  `heads_axes` along B / the heads), per device under shard_map."""
  if impl not in IMPLS:
    raise ValueError(f"context attention implementation {impl!r} not in {IMPLS}")
  C = mesh.shape[context_axis]
  T = q_BTNH.shape[1]
  if T % C:
    raise ValueError(f"sequence length {T} is not divisible by the context axis size {C}")
  spec_kw = dict(scale=scale, window=window, softcap=softcap, block_q=block, block_k=block)
  if impl == "all_gather":
    local = functools.partial(_all_gather_local, axis=context_axis, spec_kw=spec_kw)
  else:
    local = functools.partial(_ring_local, axis=context_axis, C=C, spec_kw=spec_kw)
  qkv_spec = P(batch_axes, context_axis, heads_axes, None)
  seg_spec = P(batch_axes, context_axis)
  if segment_ids_BT is None:
    fn = jax.shard_map(lambda q, k, v: local(q, k, v, None), mesh=mesh, in_specs=(qkv_spec,) * 3,
                       out_specs=qkv_spec, check_vma=False)
    return fn(q_BTNH, k_BTKH, v_BTKH)
  fn = jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,), out_specs=qkv_spec, check_vma=False)
  return fn(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT)
