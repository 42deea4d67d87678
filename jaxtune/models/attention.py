"""GQA self-attention with RoPE, packed segments, sliding windows and softcapping.

The mask is causal AND same-segment (segment_ids: 0 = padding, >0 = example
within a packed row) AND, on sliding layers, within the window (a query sees
itself and the `window - 1` tokens before it, as HF's sliding masks do).
`jax.nn.dot_product_attention` does the work unless the layer softcaps its
logits (Gemma 2), which takes a grouped einsum path; neither repeats K/V.
The full forward can run on another path instead (blockwise attention in plain
JAX, cuDNN on GPU, the splash kernel on TPU), chosen per layer and call by
`attention_kernels.resolve_impl`;
`decode` (the KV cache) always runs on XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.mesh import context_axis
from jaxtune.models import attention_kernels as kernels
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


def cache_mask(q_seg_BT, q_pos_BT, k_seg_BS, k_pos_BS, window: int | None) -> jax.Array:
  """Boolean [B, 1, T, S] mask of queries over KV-cache slots, from segment ids and positions alone.

  A query sees a slot when both are in the same segment (0 = padding or not yet
  written), the slot's position is not later than the query's and, on sliding
  layers, within the window. Positions, not cache columns, order the tokens, so
  the slots may be in any order (a sliding layer's ring wraps around); within a
  segment, positions must grow in the order the tokens are written.
  """
  mask = q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
  delta_BTS = q_pos_BT[:, :, None] - k_pos_BS[:, None, :]
  mask = mask & (delta_BTS >= 0)
  if window is not None:
    mask = mask & (delta_BTS < window)
  return mask[:, None]


def cache_write(buf: jax.Array, block: jax.Array, index: jax.Array, *, ring: bool, axis: int = 1) -> jax.Array:
  """`buf` (S slots along `axis`) with a block (t columns along `axis`) written at cache columns index..index+t-1.

  A full cache holds column c in slot c (the caller keeps columns below S); a
  ring (`ring=True`: a sliding layer keeps its last S columns) holds it in slot
  c % S, and of a block longer than S only the last S columns land.
  """
  S, t = buf.shape[axis], block.shape[axis]
  block = block.astype(buf.dtype)
  if not ring:
    return jax.lax.dynamic_update_slice_in_dim(buf, block, index, axis=axis)
  if t > S:
    block, index, t = jax.lax.slice_in_dim(block, t - S, t, axis=axis), index + (t - S), S
  if t == 1:
    return jax.lax.dynamic_update_slice_in_dim(buf, block, index % S, axis=axis)
  slots = (index + jnp.arange(t, dtype=jnp.int32)) % S
  return buf.at[(slice(None),) * axis + (slots,)].set(block)


def cache_attention(q_BtNH: jax.Array, k_BKSH: jax.Array, v_BKSH: jax.Array, mask_B1tS: jax.Array, *, scale: float,
                    softcap: float | None) -> jax.Array:
  """Grouped attention of t queries over cache slots kept as [B, K, S, H] (the layout whose dots need no
  per-step transpose of the cache on CPU); tanh softcap when given, softmax in float32. Returns [B, t, N, H]."""
  B, t, N, H = q_BtNH.shape
  K = k_BKSH.shape[1]
  q_BtKGH = q_BtNH.reshape(B, t, K, N // K, H)
  logits_BKGtS = jnp.einsum("btkgh,bksh->bkgts", q_BtKGH, k_BKSH, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    logits_BKGtS = jnp.tanh(logits_BKGtS / softcap) * softcap
  logits_BKGtS = jnp.where(mask_B1tS[:, :, None], logits_BKGtS, jnp.finfo(jnp.float32).min)
  probs_BKGtS = jax.nn.softmax(logits_BKGtS, axis=-1).astype(v_BKSH.dtype)
  return jnp.einsum("bkgts,bksh->btkgh", probs_BKGtS, v_BKSH).reshape(B, t, N, H)


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
  """Self-attention of one decoder layer; projections named like HF's.

  Whether the layer is a sliding-window one (its window, its RoPE) is `sliding`, set from the layer's index;
  the calls take it as an override, so one stacked module can run every layer of a scanned decoder
  (`model.scan_layers`), full and sliding alike."""

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               attention_impl: str | None = None, quantize: str | None = None):
    D, N, K, H = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, quantize=quantize)
    self.q_proj = Linear(D, N * H, ("embed", "heads"), bias=cfg.qkv_bias, **kw)
    self.k_proj = Linear(D, K * H, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
    self.v_proj = Linear(D, K * H, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
    self.o_proj = Linear(N * H, D, ("heads", "embed"), bias=cfg.o_bias, **kw)
    if cfg.qk_norm:
      kw.pop("quantize")
      nkw = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, axes=("head_dim",), param_dtype=param_dtype)
      self.q_norm = RMSNorm(H, **nkw)
      self.k_norm = RMSNorm(H, **nkw)
    else:
      self.q_norm = self.k_norm = None
    self.num_heads, self.num_kv_heads, self.head_dim = N, K, H
    self.sliding = cfg.is_sliding(layer)
    self.rope_full, self.rope_sliding = cfg.rope, cfg.rope_local or cfg.rope
    self.sliding_window = cfg.sliding_window
    self.scale = cfg.attn_scale
    self.softcap = cfg.attn_logit_softcap
    self.attention_impl = attention_impl
    self.platform = kernels.current_platform()
    self._impl(dtype, segmented=False)  # an explicit fast path that cannot run this layer fails here, at build

  def window(self, sliding: bool | None = None) -> int | None:
    """The attention window (None: full) of this layer, or of a layer of kind `sliding` when given."""
    return self.sliding_window if (self.sliding if sliding is None else sliding) else None

  def rope(self, sliding: bool | None = None):
    return self.rope_sliding if (self.sliding if sliding is None else sliding) else self.rope_full

  def _qkv(self, x_BTD: jax.Array, positions_BT: jax.Array, sliding: bool | None = None):
    """Projected, normed and rotated q [B,T,N,H], k and v [B,T,K,H]."""
    B, T, _ = x_BTD.shape
    q_BTNH = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
    k_BTKH = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    v_BTKH = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
    inv_freq = rope_inv_freq(self.rope(sliding), self.head_dim)
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
      out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask, scale=self.scale, is_causal=causal)
    return self.o_proj(out_BTNH.reshape(B, T, self.num_heads * self.head_dim))

  def _impl(self, dtype, *, segmented: bool, seq_len: int | None = None) -> str:
    """The implementation of this layer's full forward for one call case."""
    return kernels.resolve_impl(
        self.attention_impl, self.platform, dtype=dtype, head_dim=self.head_dim, softcap=self.softcap is not None,
        segmented=segmented, seq_len=seq_len,
        cudnn_head_dim_max=kernels.cudnn_max_head_dim() if self.platform == "gpu" else 256)

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array | None, *,
               sliding: bool | None = None) -> jax.Array:
    B, T, _ = x_BTD.shape
    window = self.window(sliding)
    q_BTNH, k_BTKH, v_BTKH = self._qkv(x_BTD, positions_BT, sliding)
    if context_axis(jax.sharding.get_abstract_mesh()) is not None:  # the sequence is split across devices
      out_BTNH = kernels.context_parallel_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale,
                                                    window=window, softcap=self.softcap,
                                                    block=kernels.blockwise_block(self.platform))
      return self.o_proj(out_BTNH.reshape(B, T, self.num_heads * self.head_dim))
    impl = self._impl(q_BTNH.dtype, segmented=segment_ids_BT is not None, seq_len=T)
    if impl == "xla":
      mask = attention_mask(segment_ids_BT, T, window)
      return self._attend(q_BTNH, k_BTKH, v_BTKH, mask, causal=True)
    if impl == "blockwise":
      out_BTNH = kernels.blockwise_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale,
                                             window=window, softcap=self.softcap,
                                             block=kernels.blockwise_block(self.platform))
    elif impl == "cudnn":
      out_BTNH = kernels.cudnn_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale, window=window)
    else:
      out_BTNH = kernels.splash_attention(q_BTNH, k_BTKH, v_BTKH, segment_ids_BT, scale=self.scale,
                                          window=window, softcap=self.softcap,
                                          interpret=impl == "splash_interpret")
    return self.o_proj(out_BTNH.reshape(B, T, self.num_heads * self.head_dim))

  def decode(self, x_BtD: jax.Array, positions_Bt: jax.Array, segment_ids_Bt: jax.Array, k_BKSH: jax.Array,
             v_BKSH: jax.Array, cache_seg_BS: jax.Array, cache_pos_BS: jax.Array, index: jax.Array, *,
             sliding: bool | None = None):
    """Attention of a block of t tokens at cache columns index..index+t-1 over this layer's KV cache
    (k, v [B, K, S, H]).

    `cache_seg_BS` / `cache_pos_BS` describe the S slots before the block is
    written. S covers every column (column c in slot c) or, on a sliding layer
    whose cache is no longer than its window, is a ring (slot c % S; see
    `cache_write`). One token, or any block on a full cache, is written first
    and attends to the slots; a longer block on a ring attends to the old slots
    and to itself side by side (writing first could evict keys it needs).
    Returns (out [B,t,D], k, v).
    """
    B, t = x_BtD.shape[:2]
    S = k_BKSH.shape[2]
    window = self.window(sliding)
    ring = window is not None and S <= window
    q_BtNH, k_BtKH, v_BtKH = self._qkv(x_BtD, positions_Bt, sliding)
    k_BKtH, v_BKtH = k_BtKH.transpose(0, 2, 1, 3), v_BtKH.transpose(0, 2, 1, 3)
    new_k_BKSH = cache_write(k_BKSH, k_BKtH, index, ring=ring, axis=2)
    new_v_BKSH = cache_write(v_BKSH, v_BKtH, index, ring=ring, axis=2)
    if ring and t > 1:
      k_BKsH = jnp.concatenate([k_BKSH.astype(q_BtNH.dtype), k_BKtH], axis=2)
      v_BKsH = jnp.concatenate([v_BKSH.astype(q_BtNH.dtype), v_BKtH], axis=2)
      seg_Bs = jnp.concatenate([cache_seg_BS, segment_ids_Bt], axis=1)
      pos_Bs = jnp.concatenate([cache_pos_BS, positions_Bt], axis=1)
    else:
      k_BKsH, v_BKsH = new_k_BKSH.astype(q_BtNH.dtype), new_v_BKSH.astype(q_BtNH.dtype)
      seg_Bs = cache_write(cache_seg_BS, segment_ids_Bt, index, ring=ring)
      pos_Bs = cache_write(cache_pos_BS, positions_Bt, index, ring=ring)
    mask = cache_mask(segment_ids_Bt, positions_Bt, seg_Bs, pos_Bs, window)
    out_BtNH = cache_attention(q_BtNH, k_BKsH, v_BKsH, mask, scale=self.scale, softcap=self.softcap)
    return self.o_proj(out_BtNH.reshape(B, t, self.num_heads * self.head_dim)), new_k_BKSH, new_v_BKSH
