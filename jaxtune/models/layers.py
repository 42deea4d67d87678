"""Shared layers: Linear, Embed, RMSNorm, RoPE (HF rotate-half), gated MLP.

Parameter attribute names follow HF (`kernel` <-> `weight` transposed,
`embedding` <-> `weight`, norms' `weight`, `bias`), and every parameter carries
`logical_axes` from `jaxtune.mesh.RULES`.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.mesh import constrain
from jaxtune.models.hf_config import RopeConfig

INIT_STD = 0.02  # HF initializer_range


def _normal(rngs: nnx.Rngs, shape: Sequence[int], dtype) -> jax.Array:
  return (INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias) (+ LoRA); kernel [in, out] is HF's weight transposed.

  `jaxtune.models.lora.add_lora` sets `lora_a` [in, r] and `lora_b` [r, out] (nnx.LoRAParam)
  and `lora_scale` (alpha / r); the adapter adds scale * (x @ a) @ b.
  """

  def __init__(self, d_in: int, d_out: int, axes: tuple[str, str], *, bias: bool = False, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    self.kernel = nnx.Param(_normal(rngs, (d_in, d_out), param_dtype), logical_axes=axes)
    self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=(axes[1],)) if bias else None
    self.dtype = dtype
    self.lora_a = nnx.data(None)  # nnx.LoRAParam [in, r] once adapters are added
    self.lora_b = nnx.data(None)  # nnx.LoRAParam [r, out]
    self.lora_scale = 0.0

  def __call__(self, x_BTI: jax.Array) -> jax.Array:
    x_BTI = x_BTI.astype(self.dtype)
    y_BTO = jnp.einsum("...i,io->...o", x_BTI, self.kernel[...].astype(self.dtype))
    if self.lora_a is not None:
      z_BTR = jnp.einsum("...i,ir->...r", x_BTI, self.lora_a[...].astype(self.dtype))
      y_BTO = y_BTO + self.lora_scale * jnp.einsum("...r,ro->...o", z_BTR, self.lora_b[...].astype(self.dtype))
    if self.bias is not None:
      y_BTO = y_BTO + self.bias[...].astype(self.dtype).reshape((1,) * (y_BTO.ndim - 1) + (-1,))
    return y_BTO


class Embed(nnx.Module):
  """Token embedding [V, D]; `attend` gives tied logits in float32."""

  def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
    self.embedding = nnx.Param(_normal(rngs, (vocab, dim), param_dtype), logical_axes=("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, ids_BT: jax.Array) -> jax.Array:
    # The table is gathered over its FSDP-sharded embed dim first (as FSDP gathers every weight before use):
    # a lookup straight from it gives rows sharded over embed, which XLA then fully replicates to reshard
    # them over the batch ("involuntary full rematerialization"). The vocab dim may stay sharded.
    table_VD = constrain(self.embedding[...], ("vocab", None))
    return jnp.take(table_VD, ids_BT, axis=0).astype(self.dtype)

  def attend(self, h_BTD: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", h_BTD.astype(self.dtype), self.embedding[...].astype(self.dtype),
                      preferred_element_type=jnp.float32)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis, statistics in float32.

  plus_one=False (Llama): w * normed.astype(x.dtype), w initialised to ones.
  plus_one=True (Gemma): (normed * (1 + w)) in float32 then cast, w initialised to zeros.
  """

  def __init__(self, dim: int, *, eps: float, plus_one: bool = False, axes: tuple[str] = ("norm",),
               param_dtype=jnp.float32):
    init = jnp.zeros if plus_one else jnp.ones
    self.weight = nnx.Param(init((dim,), param_dtype), logical_axes=axes)
    self.eps = eps
    self.plus_one = plus_one

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = self.weight[...].reshape((1,) * (x.ndim - 1) + (-1,))
    if self.plus_one:
      return (normed * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w.astype(x.dtype) * normed.astype(x.dtype)


@functools.lru_cache(maxsize=64)
def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """Inverse frequencies [head_dim // 2] in float32, as HF computes them."""
  exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
  inv = (np.float32(1.0) / (np.float32(rope.theta) ** exponent)).astype(np.float32)
  if rope.rope_type == "linear":
    inv = inv / np.float32(rope.factor)
  elif rope.rope_type == "llama3":
    old = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv


def apply_rope(x_BTNH: jax.Array, positions_BT: jax.Array, inv_freq_F: np.ndarray) -> jax.Array:
  """x * cos + rotate_half(x) * sin, angles in float32, cos/sin cast to x.dtype."""
  freqs_BTF = positions_BT.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq_F)[None, None, :]
  emb_BTH = jnp.concatenate([freqs_BTF, freqs_BTF], axis=-1)
  cos_BT1H = jnp.cos(emb_BTH).astype(x_BTNH.dtype)[:, :, None, :]
  sin_BT1H = jnp.sin(emb_BTH).astype(x_BTNH.dtype)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x_BTNH * cos_BT1H + rotated * sin_BT1H


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


class MLP(nnx.Module):
  """down(act(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, act: str, *, bias: bool = False, rngs: nnx.Rngs, dtype=jnp.float32,
               param_dtype=jnp.float32):
    kw = dict(bias=bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate_proj = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.up_proj = Linear(dim, hidden, ("embed", "mlp"), **kw)
    self.down_proj = Linear(hidden, dim, ("mlp", "embed"), **kw)
    self.act = act

  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    h_BTF = ACTIVATIONS[self.act](self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
    return self.down_proj(h_BTF)
