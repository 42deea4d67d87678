"""Blockwise (flash-style) attention in plain JAX: an online softmax over key blocks, never a [T, S] score tensor.

The same masks as the dense path (`attention.attention_mask` + causal): a query
sees a key when the key's index is not later than its own, both carry the same
segment id, and (sliding layers) the query is fewer than `window` tokens after
the key; Gemma 2's tanh softcap applies to the scaled logits. GQA runs grouped:
q is viewed as [B, K, G, T, H] against k/v [B, K, S, H], never repeated.

Work is cut into query blocks of `block_q` and key blocks of `block_k` tokens.
Per query block, only the key blocks that causal and window bounds leave in
play are visited (a while loop with bounds computed from the blocks' indices),
and a visited pair whose segment-id ranges are disjoint in every row is skipped
by a `lax.cond`. The backward pass recomputes scores block by block from the
saved log-sum-exp (a custom VJP), so memory stays linear in T.

Indices are global: `q_offset` / `kv_offset` place the query and key chunks in
one sequence, so the same chunk functions (`chunk_forward` / `chunk_backward`
on the grouped layout of `group_q` / `group_kv`) are the inner loop of context
parallelism (jaxtune/models/context_attention.py), where the KV chunk comes from
another device.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

BLOCK = 512  # default query and key block (tokens); see bench/blockwise_attention.py


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static settings of one attention call: scale, masks and block sizes."""
  scale: float
  window: int | None = None
  softcap: float | None = None
  block_q: int = BLOCK
  block_k: int = BLOCK


def block_size(n: int, block: int) -> int:
  """The block for a length n: `block`, or n itself when shorter (one block, no padding)."""
  return max(1, min(block, n))


# -- layout ----------------------------------------------------------------------
def _pad_to(x: jax.Array, axis: int, multiple: int, mode: str = "constant") -> jax.Array:
  n = x.shape[axis]
  extra = -n % multiple
  if not extra:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, extra)
  return jnp.pad(x, pad, mode=mode)


def group_q(q_BTNH: jax.Array, num_kv_heads: int, block: int) -> jax.Array:
  """[B, T, N, H] -> [B, K, G, Tp, H] (Tp: T padded up to a multiple of `block`)."""
  B, T, N, H = q_BTNH.shape
  q_BKGTH = q_BTNH.reshape(B, T, num_kv_heads, N // num_kv_heads, H).transpose(0, 2, 3, 1, 4)
  return _pad_to(q_BKGTH, 3, block)


def group_kv(x_BSKH: jax.Array, block: int) -> jax.Array:
  """[B, S, K, H] -> [B, K, Sp, H] (Sp: S padded up to a multiple of `block`)."""
  return _pad_to(x_BSKH.transpose(0, 2, 1, 3), 2, block)


def ungroup(o_BKGTH: jax.Array, T: int) -> jax.Array:
  """[B, K, G, Tp, H] -> [B, T, N, H]."""
  B, K, G, _, H = o_BKGTH.shape
  return o_BKGTH[:, :, :, :T].transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


def pad_segments(seg_BT: jax.Array | None, block: int) -> jax.Array | None:
  """Segment ids padded by repeating the last one (padded keys are masked by index, and a repeated id
  leaves the blocks' id ranges as they were)."""
  return None if seg_BT is None else _pad_to(seg_BT.astype(jnp.int32), 1, block, mode="edge")


# -- block bounds ----------------------------------------------------------------
def _seg_ranges(seg_BT: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
  """Per row and block: (min, max) segment id, each [B, n_blocks]."""
  B, Tp = seg_BT.shape
  seg_BnL = seg_BT.reshape(B, Tp // block, block)
  return seg_BnL.min(-1), seg_BnL.max(-1)


def _seg_overlap(q_rng, k_rng, i, j) -> jax.Array:
  """Whether query block i and key block j may share a segment id in some row (their id ranges meet)."""
  (q_lo, q_hi), (k_lo, k_hi) = q_rng, k_rng
  return jnp.any((k_hi[:, j] >= q_lo[:, i]) & (k_lo[:, j] <= q_hi[:, i]))


def _kv_range(i, spec: Spec, nk: int, q_offset, kv_offset):
  """[lo, hi) of the key blocks that query block i can see under the causal and window bounds."""
  bq, bk = spec.block_q, spec.block_k
  q_first = q_offset + i * bq
  q_last = q_first + bq - 1
  hi = jnp.clip((q_last - kv_offset) // bk + 1, 0, nk)  # key blocks starting at or before the last query
  if spec.window is None:
    return jnp.zeros_like(hi), hi
  # key blocks whose last key is at least `window` before the first query are out of every window
  lo = jnp.clip((q_first - spec.window - kv_offset + 1) // bk, 0, nk)
  return lo, jnp.maximum(lo, hi)


def _q_range(j, spec: Spec, nq: int, q_offset, kv_offset, S: int):
  """[lo, hi) of the query blocks that see key block j under the causal and window bounds."""
  bq, bk = spec.block_q, spec.block_k
  k_first = kv_offset + j * bk
  k_last = kv_offset + jnp.minimum((j + 1) * bk, S) - 1
  lo = jnp.clip((k_first - q_offset) // bq, 0, nq)  # query blocks ending before the first key see none of it
  if spec.window is None:
    return lo, jnp.full_like(lo, nq)
  hi = jnp.clip(-((q_offset - k_last - spec.window) // bq), 0, nq)  # ceil((k_last + window - q_offset) / bq)
  return lo, jnp.maximum(lo, hi)


def _mask(i, j, spec: Spec, S: int, q_offset, kv_offset, q_seg, k_seg) -> jax.Array:
  """Boolean [B|1, 1, 1, bq, bk] mask of query block i over key block j (True = attend)."""
  bq, bk = spec.block_q, spec.block_k
  k_local = j * bk + jnp.arange(bk)
  q_idx = (q_offset + i * bq + jnp.arange(bq))[:, None]
  k_idx = (kv_offset + k_local)[None, :]
  ok = (k_idx <= q_idx) & (k_local < S)[None, :]  # causal, and not a padded key
  if spec.window is not None:
    ok = ok & (q_idx - k_idx < spec.window)
  ok = ok[None]
  if q_seg is not None:
    qs_Bq = jax.lax.dynamic_slice_in_dim(q_seg, i * bq, bq, axis=1)
    ks_Bk = jax.lax.dynamic_slice_in_dim(k_seg, j * bk, bk, axis=1)
    ok = ok & (qs_Bq[:, :, None] == ks_Bk[:, None, :])
  return ok[:, None, None]


def _logits(q_blk, k_blk, spec: Spec):
  """Scaled (and softcapped) float32 logits [B, K, G, bq, bk]; also tanh of the softcap (None without)."""
  s = jnp.einsum("bkgqh,bksh->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32) * spec.scale
  if spec.softcap is None:
    return s, None
  t = jnp.tanh(s / spec.softcap)
  return t * spec.softcap, t


# -- forward ---------------------------------------------------------------------
def chunk_forward(q_BKGTH, k_BKSH, v_BKSH, q_seg, k_seg, *, spec: Spec, S: int, q_offset=0, kv_offset=0):
  """Attention of grouped queries over one grouped KV chunk (S real keys of its padded Sp).

  Returns (out [B, K, G, Tp, H] float32, normalised over this chunk; lse [B, K, G, Tp] float32, the
  log-sum-exp of the visible logits, -inf where a query sees no key of the chunk; out is 0 there)."""
  B, K, G, Tp, H = q_BKGTH.shape
  bq, bk = spec.block_q, spec.block_k
  nq, nk = Tp // bq, k_BKSH.shape[2] // bk
  ranges = None if q_seg is None else (_seg_ranges(q_seg, bq), _seg_ranges(k_seg, bk))

  def one_q_block(i):
    q_blk = jax.lax.dynamic_slice_in_dim(q_BKGTH, i * bq, bq, axis=3)

    def visit(j, carry):
      m, l, acc = carry
      k_blk = jax.lax.dynamic_slice_in_dim(k_BKSH, j * bk, bk, axis=2)
      v_blk = jax.lax.dynamic_slice_in_dim(v_BKSH, j * bk, bk, axis=2)
      s, _ = _logits(q_blk, k_blk, spec)
      s = jnp.where(_mask(i, j, spec, S, q_offset, kv_offset, q_seg, k_seg), s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - m_safe[..., None])
      alpha = jnp.exp(m - m_safe)
      pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
      return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

    def step(j, carry):
      if ranges is None:
        return visit(j, carry)
      return jax.lax.cond(_seg_overlap(*ranges, i, j), visit, lambda j, c: c, j, carry)

    init = (jnp.full((B, K, G, bq), -jnp.inf, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
            jnp.zeros((B, K, G, bq, H), jnp.float32))
    lo, hi = _kv_range(i, spec, nk, q_offset, kv_offset)
    m, l, acc = jax.lax.fori_loop(lo, hi, step, init)
    out = acc / jnp.where(l > 0, l, 1.0)[..., None]
    lse = jnp.where(l > 0, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(jnp.where(l > 0, l, 1.0)), -jnp.inf)
    return out, lse

  out_nBKGqH, lse_nBKGq = jax.lax.map(one_q_block, jnp.arange(nq))
  out = out_nBKGqH.transpose(1, 2, 3, 0, 4, 5).reshape(B, K, G, Tp, H)
  lse = lse_nBKGq.transpose(1, 2, 3, 0, 4).reshape(B, K, G, Tp)
  return out, lse


# -- backward --------------------------------------------------------------------
def chunk_backward(q_BKGTH, k_BKSH, v_BKSH, q_seg, k_seg, do_BKGTH, lse_BKGT, delta_BKGT, *, spec: Spec, S: int,
                   q_offset=0, kv_offset=0):
  """Gradients (dq [B, K, G, Tp, H], dk, dv [B, K, Sp, H], float32) of one chunk's share of the attention,
  given the *final* lse of every query and delta = sum(do * out) over head_dim (flash attention's backward:
  p = exp(s - lse), ds = p * (dp - delta))."""
  B, K, G, Tp, H = q_BKGTH.shape
  bq, bk = spec.block_q, spec.block_k
  nq, nk = Tp // bq, k_BKSH.shape[2] // bk
  ranges = None if q_seg is None else (_seg_ranges(q_seg, bq), _seg_ranges(k_seg, bk))
  lse_safe = jnp.where(jnp.isfinite(lse_BKGT), lse_BKGT, 0.0)

  def one_k_block(dq, j):
    k_blk = jax.lax.dynamic_slice_in_dim(k_BKSH, j * bk, bk, axis=2)
    v_blk = jax.lax.dynamic_slice_in_dim(v_BKSH, j * bk, bk, axis=2)

    def visit(i, carry):
      dq, dk, dv = carry
      q_blk = jax.lax.dynamic_slice_in_dim(q_BKGTH, i * bq, bq, axis=3)
      do_blk = jax.lax.dynamic_slice_in_dim(do_BKGTH, i * bq, bq, axis=3)
      lse_blk = jax.lax.dynamic_slice_in_dim(lse_safe, i * bq, bq, axis=3)
      delta_blk = jax.lax.dynamic_slice_in_dim(delta_BKGT, i * bq, bq, axis=3)
      s, t = _logits(q_blk, k_blk, spec)
      mask = _mask(i, j, spec, S, q_offset, kv_offset, q_seg, k_seg)
      p = jnp.where(mask, jnp.exp(s - lse_blk[..., None]), 0.0)
      dv = dv + jnp.einsum("bkgqs,bkgqh->bksh", p.astype(do_blk.dtype), do_blk, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkgqh,bksh->bkgqs", do_blk, v_blk, preferred_element_type=jnp.float32)
      ds = p * (dp - delta_blk[..., None])
      if t is not None:
        ds = ds * (1.0 - t * t)
      ds = (ds * spec.scale).astype(q_blk.dtype)
      dq_blk = jax.lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=3)
      dq_blk = dq_blk + jnp.einsum("bkgqs,bksh->bkgqh", ds, k_blk, preferred_element_type=jnp.float32)
      dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_blk, i * bq, axis=3)
      dk = dk + jnp.einsum("bkgqs,bkgqh->bksh", ds, q_blk, preferred_element_type=jnp.float32)
      return dq, dk, dv

    def step(i, carry):
      if ranges is None:
        return visit(i, carry)
      return jax.lax.cond(_seg_overlap(*ranges, i, j), visit, lambda i, c: c, i, carry)

    zeros = jnp.zeros((B, K, bk, H), jnp.float32)
    lo, hi = _q_range(j, spec, nq, q_offset, kv_offset, S)
    dq, dk, dv = jax.lax.fori_loop(lo, hi, step, (dq, zeros, zeros))
    return dq, (dk, dv)

  dq, (dk_nBKkH, dv_nBKkH) = jax.lax.scan(one_k_block, jnp.zeros(q_BKGTH.shape, jnp.float32), jnp.arange(nk))
  unblock = lambda x: x.transpose(1, 2, 0, 3, 4).reshape(B, K, nk * bk, H)  # noqa: E731
  return dq, unblock(dk_nBKkH), unblock(dv_nBKkH)


def delta(do_BKGTH: jax.Array, out_BKGTH: jax.Array) -> jax.Array:
  """sum(do * out) over head_dim, float32 [B, K, G, Tp]."""
  return jnp.einsum("bkgqh,bkgqh->bkgq", do_BKGTH.astype(jnp.float32), out_BKGTH.astype(jnp.float32))


# -- one sequence (q and kv on the same device) ------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _grouped(q, k, v, q_seg, k_seg, q_offset, kv_offset, spec: Spec, S: int):
  out, _ = chunk_forward(q, k, v, q_seg, k_seg, spec=spec, S=S, q_offset=q_offset, kv_offset=kv_offset)
  return out.astype(q.dtype)


def _grouped_fwd(q, k, v, q_seg, k_seg, q_offset, kv_offset, spec, S):
  out, lse = chunk_forward(q, k, v, q_seg, k_seg, spec=spec, S=S, q_offset=q_offset, kv_offset=kv_offset)
  out = out.astype(q.dtype)
  return out, (q, k, v, q_seg, k_seg, q_offset, kv_offset, out, lse)


def _grouped_bwd(spec, S, res, do):
  q, k, v, q_seg, k_seg, q_offset, kv_offset, out, lse = res
  dq, dk, dv = chunk_backward(q, k, v, q_seg, k_seg, do, lse, delta(do, out), spec=spec, S=S, q_offset=q_offset,
                              kv_offset=kv_offset)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def blockwise_attention(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, segment_ids_BT: jax.Array | None,
                        *, scale: float, window: int | None = None, softcap: float | None = None,
                        kv_segment_ids_BS: jax.Array | None = None, q_offset=0, kv_offset=0, block_q: int = BLOCK,
                        block_k: int = BLOCK) -> jax.Array:
  """Causal GQA attention [B, T, N, H] of q over k/v [B, S, K, H], computed block by block.

  `segment_ids_BT` (None: one segment) are the queries' segment ids, and the keys' too unless
  `kv_segment_ids_BS` is given; `q_offset` / `kv_offset` (ints or traced scalars) are the global indices of
  the first query and key (both 0 for self-attention)."""
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  spec = Spec(scale=scale, window=window, softcap=softcap, block_q=block_size(T, block_q),
              block_k=block_size(S, block_k))
  if segment_ids_BT is not None and kv_segment_ids_BS is None:
    kv_segment_ids_BS = segment_ids_BT
  q = group_q(q_BTNH, K, spec.block_q)
  k, v = group_kv(k_BSKH, spec.block_k), group_kv(v_BSKH, spec.block_k)
  q_seg, k_seg = pad_segments(segment_ids_BT, spec.block_q), pad_segments(kv_segment_ids_BS, spec.block_k)
  offsets = jnp.asarray(q_offset, jnp.int32), jnp.asarray(kv_offset, jnp.int32)
  return ungroup(_grouped(q, k, v, q_seg, k_seg, *offsets, spec, S), T)
