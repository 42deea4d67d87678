"""A fast attention path against the XLA path, in the same run: equal values and gradients, then time.

For the implementations `model.attention` picks per platform (jaxtune/models/attention_kernels.py): cuDNN
on a CUDA GPU, the splash kernel on a TPU (or `splash_interpret` anywhere, slowly: a check, not a timing),
blockwise anywhere (bench/blockwise_attention.py compares it with XLA over several lengths, with memory).
It first checks the fast path's forward output and its gradients against the XLA path on the same inputs
(max |diff| relative to the largest value), failing (exit 1) past `--tol`, then times forward + backward of
both and prints RESULT lines with ms, attention TFLOP/s and, where the device reports it, the peak device
memory of the run.

  python bench/attention.py --impl cudnn --batch 2 --seq-len 4096 --heads 32 --kv-heads 8 --head-dim 128
  python bench/attention.py --impl cudnn --packed --window 1024      # packed rows: cuDNN's dense bias

  RESULT check impl=cudnn out_rel_err=... grad_rel_err=...
  RESULT <impl|xla> ms=... tflops=...
  RESULT ratio xla_over_impl=... peak_mem_mb=... platform=...
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.models import attention_kernels as kernels
from jaxtune.models.attention import attention_mask, softcapped_attention


def inputs(B, T, N, K, H, dtype, packed: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, T, n, H)), dtype) for n in (N, K, K))
  seg = None
  if packed:  # four examples per row, the last one cut short by padding (segment 0)
    seg = np.repeat(np.arange(1, 5), T // 4)[None].repeat(B, 0).astype(np.int32)
    seg[:, T - T // 16:] = 0
    seg = jnp.asarray(seg)
  return q, k, v, seg


def xla(q, k, v, seg, *, scale, window, softcap):
  mask = attention_mask(seg, q.shape[1], window)
  if softcap is not None:
    return softcapped_attention(q, k, v, mask, scale=scale, softcap=softcap)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=True)


def fast(impl, q, k, v, seg, *, scale, window, softcap):
  if impl == "blockwise":
    return kernels.blockwise_attention(q, k, v, seg, scale=scale, window=window, softcap=softcap,
                                       block=kernels.blockwise_block(jax.default_backend()))
  if impl == "cudnn":
    assert softcap is None, "cuDNN has no softcap"
    return kernels.cudnn_attention(q, k, v, seg, scale=scale, window=window)
  return kernels.splash_attention(q, k, v, seg, scale=scale, window=window, softcap=softcap,
                                  interpret=impl == "splash_interpret")


def fwd_bwd(f):
  def loss(q, k, v, seg):
    out = f(q, k, v, seg)
    return (out.astype(jnp.float32) * jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))).sum()
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def timed_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def peak_mem_mb() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--impl", choices=("cudnn", "splash", "splash_interpret", "blockwise"), default="cudnn")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--heads", type=int, default=32)
  p.add_argument("--kv-heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
  p.add_argument("--packed", action="store_true", help="packed rows (segment ids)")
  p.add_argument("--window", type=int, default=None)
  p.add_argument("--softcap", type=float, default=None)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--tol", type=float, default=None, help="max relative error (default: 2e-2 bf16/fp16, 1e-5 f32)")
  a = p.parse_args()
  dtype = jnp.dtype(a.dtype)
  tol = a.tol if a.tol is not None else (1e-5 if dtype == jnp.float32 else 2e-2)
  platform = jax.default_backend()
  kernels.resolve_impl(a.impl, platform, dtype=dtype, head_dim=a.head_dim, softcap=a.softcap is not None,
                       segmented=a.packed, seq_len=a.seq_len)  # a clear error where the impl cannot run
  B, T, N, K, H = a.batch, a.seq_len, a.heads, a.kv_heads, a.head_dim
  args = inputs(B, T, N, K, H, dtype, a.packed)
  opts = dict(scale=H ** -0.5, window=a.window, softcap=a.softcap)
  f_fast = fwd_bwd(functools.partial(fast, a.impl, **opts))
  f_xla = fwd_bwd(functools.partial(xla, **opts))
  out_fast = jax.jit(functools.partial(fast, a.impl, **opts))(*args)
  out_xla = jax.jit(functools.partial(xla, **opts))(*args)
  (_, g_fast), (_, g_xla) = f_fast(*args), f_xla(*args)
  out_err = rel_err(out_fast, out_xla)
  grad_err = max(rel_err(x, y) for x, y in zip(g_fast, g_xla))
  print(f"RESULT check impl={a.impl} out_rel_err={out_err:.2e} grad_rel_err={grad_err:.2e}", flush=True)
  if max(out_err, grad_err) > tol:
    print(f"{a.impl} differs from XLA past tol={tol:g}", file=sys.stderr)
    return 1
  # Causal attention FLOPs of forward + backward (backward ~2.5x forward): 4*B*N*T*T*H/2 * 3.5.
  span = min(T, a.window) if a.window else T / 2
  flops = 4 * B * N * T * span * H * 3.5
  ms = {}
  for name, fn in ((a.impl, f_fast), ("xla", f_xla)):
    ms[name] = timed_ms(fn, args, a.repeats)
    print(f"RESULT {name} ms={ms[name]:.3f} tflops={flops / ms[name] / 1e9:.1f}", flush=True)
  # One process holds both sides: the peak is the larger of the two (nan where the device reports none).
  print(f"RESULT ratio xla_over_impl={ms['xla'] / ms[a.impl]:.3f} peak_mem_mb={peak_mem_mb():.0f} "
        f"platform={platform}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
