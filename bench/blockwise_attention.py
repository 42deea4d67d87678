"""Blockwise (flash-style) attention against the dense XLA path: forward + backward time and memory per length.

For each sequence length, each implementation runs in its own child process (so peak RSS is its own): it first
checks blockwise against dense on a short packed input (values and gradients, exit 1 past --tol), then times
jitted forward + backward of attention on packed rows (four examples per row, the last cut short by padding;
optionally a sliding window / softcap), and reports the compiled step's temporary memory (XLA's buffer
assignment, `memory_analysis().temp_size_in_bytes`: what the score tensors cost), the host peak RSS of the child
and, where the device reports it, the device peak.

  python bench/blockwise_attention.py --seq-lens 512,2048,8192 [--batch 1 --heads 8 --kv-heads 2 --head-dim 64]
      [--window W] [--softcap C] [--unpacked] [--block B] [--dtype float32|bfloat16] [--repeats 3]

  RESULT dense seq=512 ms=... temp_mb=... rss_mb=... device_peak_mb=...
  RESULT blockwise seq=512 ms=... temp_mb=... rss_mb=... device_peak_mb=...
  RESULT ratio seq=512 dense_over_blockwise=...
  (dense at a length it cannot allocate: `RESULT dense seq=... failed=1`)
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import results  # noqa: E402  (bench/ is the script's own dir)

IMPLS = ("dense", "blockwise")


def attend(impl, q, k, v, seg, *, scale, window, softcap, block):
  from attention import xla  # bench/attention.py: the dense path as the model runs it
  from jaxtune.models.blockwise import blockwise_attention
  if impl == "blockwise":
    return blockwise_attention(q, k, v, seg, scale=scale, window=window, softcap=softcap, block_q=block,
                               block_k=block)
  return xla(q, k, v, seg, scale=scale, window=window, softcap=softcap)


def check(a, opts) -> float:
  """Max relative error of blockwise vs dense (output and q/k/v gradients) on a short input that spans
  several blocks (block 64, T = 300: not a multiple)."""
  import jax.numpy as jnp
  from attention import fwd_bwd, inputs, rel_err
  small = dict(opts, block=64)
  args = inputs(2, 300, a.heads, a.kv_heads, a.head_dim, jnp.float32, packed=True)
  (lb, gb), (ld, gd) = (fwd_bwd(functools.partial(attend, impl, **small))(*args) for impl in IMPLS[::-1])
  return max([rel_err(lb, ld)] + [rel_err(x, y) for x, y in zip(gb, gd)])


def child(a) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from attention import fwd_bwd, inputs
  from jaxtune.models.attention_kernels import blockwise_block
  a.block = a.block or blockwise_block(jax.default_backend())
  opts = dict(scale=a.head_dim ** -0.5, window=a.window, softcap=a.softcap, block=a.block)
  if a._child == "blockwise":
    err = check(a, opts)
    print(f"[check] blockwise vs dense, float32, T=300 block 64: max rel err {err:.2e}", flush=True)
    if err > a.tol:
      raise SystemExit(f"blockwise differs from dense past --tol={a.tol:g}")
  args = inputs(a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, jnp.dtype(a.dtype), packed=not a.unpacked)
  fn = fwd_bwd(functools.partial(attend, a._child, **opts))
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  temp_mb = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  stats = jax.devices()[0].memory_stats() or {}
  dev_mb = stats.get("peak_bytes_in_use", float("nan")) / 2**20
  rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  print(f"[{a._child}] platform={jax.default_backend()} device={jax.devices()[0].device_kind}", flush=True)
  print(f"RESULT {a._child} seq={a.seq} ms={1e3 * float(np.median(times)):.1f} temp_mb={temp_mb:.1f} "
        f"rss_mb={rss_mb:.0f} device_peak_mb={dev_mb:.0f} compile_s={compile_s:.1f}", flush=True)


def run_child(impl: str, seq: int, a) -> dict | None:
  cmd = [sys.executable, os.path.abspath(__file__), "--_child", impl, "--seq", str(seq)] + a.passthrough
  result = results.run_child(cmd, impl)
  if result is None:
    print(f"RESULT {impl} seq={seq} failed=1", flush=True)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seq-lens", default="512,2048,8192")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=2)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--window", type=int, default=None)
  p.add_argument("--softcap", type=float, default=None)
  p.add_argument("--unpacked", action="store_true", help="one causal sequence per row (no segment ids)")
  p.add_argument("--block", type=int, default=None, help="query/key block (default: the platform's, "
                 "jaxtune.models.attention_kernels.BLOCKWISE_BLOCK)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tol", type=float, default=1e-5)
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--seq", type=int, default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._child:
    child(a)
    return 0
  argv = list(argv if argv is not None else sys.argv[1:])
  a.passthrough = [x for i, x in enumerate(argv) if x != "--seq-lens" and (i == 0 or argv[i - 1] != "--seq-lens")
                   and not x.startswith("--seq-lens=")]
  ok = True
  for seq in (int(s) for s in a.seq_lens.split(",")):
    res = {impl: run_child(impl, seq, a) for impl in a.impls.split(",")}
    ok &= res.get("blockwise", {}) is not None
    if res.get("dense") and res.get("blockwise"):
      print(f"RESULT ratio seq={seq} dense_over_blockwise={res['dense']['ms'] / res['blockwise']['ms']:.3f}",
            flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
