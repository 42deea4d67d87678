"""GQA self-attention with RoPE, packed segments, sliding windows and softcapping.

The mask is causal AND same-segment (segment_ids: 0 = padding, >0 = example
within a packed row) AND, on sliding layers, within the window (a query sees
itself and the `window - 1` tokens before it, as HF's sliding masks do).
`jax.nn.dot_product_attention` does the work unless the layer softcaps its
logits (Gemma 2), which takes a grouped einsum path; neither repeats K/V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.models.config import ModelConfig
from jaxtune.models.layers import Linear, RMSNorm, apply_rope, rope_inv_freq


def attention_mask(segment_ids_BT: jax.Array | None, T: int, window: int | None) -> jax.Array | None:
  """Boolean [B|1, 1, T, T] mask (True = attend), without the causal part; None if nothing to mask."""
  mask = None
  if segment_ids_BT is not None:
    mask = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None]
  if window is not None and window < T:
    q_T1 = jnp.arange(T)[:, None]
    k_1T = jnp.arange(T)[None, :]
    in_window = (q_T1 - k_1T < window)[None, None]
    mask = in_window if mask is None else mask & in_window
  return mask


def cache_mask(q_seg_BT, q_pos_BT, q_col_T, k_seg_BS, k_pos_BS, window: int | None) -> jax.Array:
  """Boolean [B, 1, T, S] mask of queries at cache columns `q_col_T` over a KV cache.

  A query sees a cache slot when both are in the same segment (0 = padding or
  not yet written), the slot is not later than the query, and, on sliding
  layers, the slot's position is within the window of the query's.
  """
  S = k_seg_BS.shape[1]
  mask = q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
  mask = mask & (jnp.arange(S)[None, None, :] <= q_col_T[None, :, None])
  if window is not None:
    mask = mask & (q_pos_BT[:, :, None] - k_pos_BS[:, None, :] < window)
  return mask[:, None]


def softcapped_attention(q_BTNH, k_BSKH, v_BSKH, mask, *, scale: float, softcap: float,
                         causal: bool = True) -> jax.Array:
  """Attention with tanh-softcapped logits (causal unless `causal=False`); softmax in float32."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  logits_BKGTS = jnp.einsum("btkgh,bskh->bkgts", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32) * scale
  logits_BKGTS = jnp.tanh(logits_BKGTS / softcap) * softcap
  S = k_BSKH.shape[1]
  allowed = jnp.tril(jnp.ones((T, S), dtype=bool))[None, None, None] if causal else jnp.ones((1, 1, 1, T, S), bool)
  if mask is not None:
    allowed = allowed & mask[:, :, None]  # [B|1, 1, 1, T, S]
  logits_BKGTS = jnp.where(allowed, logits_BKGTS, jnp.finfo(jnp.float32).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKH.dtype)
  out_BTKGH = jnp.einsum("bkgts,bskh->btkgh", probs_BKGTS, v_BSKH)
  return out_BTKGH.reshape(B, T, N, H)


class Attention(nnx.Module):
  """Self-attention of one decoder layer; projections named like HF's."""

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               attention_impl: str | None = None):
    D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.q_proj = Linear(D, N * H, ("embed", "heads"), bias=cfg.qkv_bias, **kw)
    self.k_proj = Linear(D, K * H, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
    self.v_proj = Linear(D, K * H, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
    self.o_proj = Linear(N * H, D, ("heads", "embed"), bias=cfg.o_bias, **kw)
    if cfg.qk_norm:
      nkw = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, axes=("head_dim",), param_dtype=param_dtype)
      self.q_norm = RMSNorm(H, **nkw)
      self.k_norm = RMSNorm(H, **nkw)
    else:
      self.q_norm = self.k_norm = None
    self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
    self.rope = cfg.rope_for(layer)
    self.window = cfg.window(layer)
    self.scale = cfg.attn_scale
    self.softcap = cfg.attn_logit_softcap
    self.attention_impl = attention_impl

  def _qkv(self, x_BTD: jax.Array, positions_BT: jax.Array):
    """Projected, normed and rotated q [B,T,N,H], k and v [B,T,K,H]."""
    B, T, _ = x_BTD.shape
    q_BTNH = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
    k_BTKH = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    v_BTKH = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
    inv_freq = rope_inv_freq(self.rope, self.head_dim)
    q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq)
    k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq)
    return q_BTNH, k_BTKH, v_BTKH

  def _attend(self, q_BTNH, k_BSKH, v_BSKH, mask, *, causal: bool) -> jax.Array:
    """Attention output projected back to [B, T, D]."""
    B, T = q_BTNH.shape[:2]
    if self.softcap is not None:
      out_BTNH = softcapped_attention(q_BTNH, k_BSKH, v_BSKH, mask, scale=self.scale, softcap=self.softcap,
                                      causal=causal)
    else:
      out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask, scale=self.scale, is_causal=causal,
                                              implementation=self.attention_impl)
    return self.o_proj(out_BTNH.reshape(B, T, self.num_heads * self.head_dim))

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array | None) -> jax.Array:
    q_BTNH, k_BTKH, v_BTKH = self._qkv(x_BTD, positions_BT)
    mask = attention_mask(segment_ids_BT, x_BTD.shape[1], self.window)
    return self._attend(q_BTNH, k_BTKH, v_BTKH, mask, causal=True)

  def decode(self, x_BtD: jax.Array, positions_Bt: jax.Array, segment_ids_Bt: jax.Array, k_BSKH: jax.Array,
             v_BSKH: jax.Array, cache_seg_BS: jax.Array, cache_pos_BS: jax.Array, index: jax.Array):
    """Attention of a block of t tokens written into the KV cache at columns index..index+t-1.

    `cache_seg_BS` / `cache_pos_BS` already include the block. Returns (out [B,t,D], k, v).
    """
    t = x_BtD.shape[1]
    q_BtNH, k_BtKH, v_BtKH = self._qkv(x_BtD, positions_Bt)
    k_BSKH = jax.lax.dynamic_update_slice_in_dim(k_BSKH, k_BtKH.astype(k_BSKH.dtype), index, axis=1)
    v_BSKH = jax.lax.dynamic_update_slice_in_dim(v_BSKH, v_BtKH.astype(v_BSKH.dtype), index, axis=1)
    q_col_t = index + jnp.arange(t, dtype=jnp.int32)
    mask = cache_mask(segment_ids_Bt, positions_Bt, q_col_t, cache_seg_BS, cache_pos_BS, self.window)
    out_BtD = self._attend(q_BtNH, k_BSKH.astype(q_BtNH.dtype), v_BSKH.astype(q_BtNH.dtype), mask, causal=False)
    return out_BtD, k_BSKH, v_BSKH
