"""Frozen base weights stored quantized for QLoRA (`model.quantize`): int8 or NF4 codes with blockwise scales.

A kernel [..., in, out] is cut along its input axis into blocks of `block_size(in)` (64 where it divides)
values per output column; each block keeps its absolute maximum as a float32 scale and its values divided by
it, coded as
  - int8: round(127 * w / absmax), one byte per value (with the scales: ~0.27x the float32 bytes);
  - nf4: the nearest of the 16 NormalFloat4 levels (QLoRA: quantiles of a standard normal, scaled to [-1, 1],
    with an exact 0) as a 4-bit code, two codes per uint8 along the input axis (~0.14x).
`dequantize` restores the kernel in the compute dtype inside the layer's matmul, so only the codes and scales
are ever stored; the adapters train in param_dtype beside them (jaxtune/models/lora.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FORMATS = ("int8", "nf4")
BLOCK = 64
# The NF4 code book (Dettmers et al., "QLoRA", 2023, appendix E): 16 levels in [-1, 1], 0 exactly representable.
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
NF4_MIDPOINTS = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2


class Quantized(nnx.Variable):
  """Codes or scales of a quantized frozen kernel: state that is neither trained nor a float parameter."""


def block_size(d_in: int) -> int:
  """The scale block along an input axis of d_in: the largest power of two <= BLOCK that divides it."""
  b = BLOCK
  while d_in % b:
    b //= 2
  return b


def check_format(fmt: str, d_in: int) -> None:
  if fmt not in FORMATS:
    raise ValueError(f"quantization format {fmt!r} not in {FORMATS}")
  if fmt == "nf4" and d_in % 2:
    raise ValueError(f"nf4 packs two codes per byte along the input axis: {d_in} inputs is odd")


def quantize(w: jax.Array, fmt: str) -> tuple[jax.Array, jax.Array]:
  """(codes, scales) of a kernel [..., in, out]: codes int8 [..., in, out] (int8) or uint8 [..., in/2, out]
  (nf4, the even input in the low nibble); scales float32 [..., in/block, out]."""
  *lead, d_in, d_out = w.shape
  check_format(fmt, d_in)
  b = block_size(d_in)
  w_blocks = w.astype(jnp.float32).reshape(*lead, d_in // b, b, d_out)
  scale = jnp.max(jnp.abs(w_blocks), axis=-2)
  x = w_blocks / jnp.where(scale > 0, scale, 1.0)[..., None, :]
  x = x.reshape(*lead, d_in, d_out)
  if fmt == "int8":
    return jnp.round(x * 127.0).astype(jnp.int8), scale
  code = jnp.searchsorted(jnp.asarray(NF4_MIDPOINTS), x).astype(jnp.uint8)
  return code[..., 0::2, :] | (code[..., 1::2, :] << 4), scale


def dequantize(codes: jax.Array, scale: jax.Array, fmt: str, dtype=jnp.float32) -> jax.Array:
  """The kernel [..., in, out] in `dtype` from `quantize`'s codes and scales."""
  *lead, n_blocks, d_out = scale.shape
  if fmt == "int8":
    x = codes.astype(jnp.float32) * (1.0 / 127.0)
  else:
    levels = jnp.asarray(NF4_LEVELS)
    pairs = jnp.stack([levels[codes & 15], levels[codes >> 4]], axis=-2)  # [..., in/2, 2, out]
    x = pairs.reshape(*lead, 2 * codes.shape[-2], d_out)
  d_in = x.shape[-2]
  w = x.reshape(*lead, n_blocks, d_in // n_blocks, d_out) * scale[..., None, :]
  return w.reshape(*lead, d_in, d_out).astype(dtype)


def max_error(fmt: str) -> float:
  """The largest |dequantize(quantize(w)) - w| as a fraction of its block's absmax: half a code step."""
  return 0.5 / 127.0 if fmt == "int8" else float(np.max(np.diff(NF4_LEVELS)) / 2)


def stored_bytes(shape: tuple[int, ...], fmt: str) -> int:
  """Bytes of the codes and scales of a kernel of `shape` [..., in, out]."""
  *lead, d_in, d_out = shape
  n = int(np.prod(lead, dtype=np.int64)) if lead else 1
  codes = d_in * d_out if fmt == "int8" else d_in // 2 * d_out
  return n * (codes + 4 * d_in // block_size(d_in) * d_out)
