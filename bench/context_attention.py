"""Context-parallel attention: K/V all-gathered vs passed around a ring, on a mesh of (fake) devices.

Every row's sequence is split over the context axis (C devices); the other devices of the mesh split the batch
(data axis), so every run uses all devices. For each C and each way of bringing K/V
(jaxtune/models/context_attention.py) it checks forward + backward against blockwise attention on one
device (itself checked against the dense path by tests/models/test_blockwise.py; the dense scores of long rows
do not fit) (exit 1 past --tol), then times jitted forward + backward (median of --repeats: wall ms, and CPU ms of the
process, steadier on a shared machine where the fake devices share the cores) and reports the per-device
temporaries of the compiled program (`memory_analysis()`).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/context_attention.py \
      [--contexts 2,4,8] [--seq-len 4096] [--heads 8 --kv-heads 2 --head-dim 64] [--window W] [--repeats 3]

  RESULT all_gather context=2 ms=... cpu_ms=... temp_mb=... rel_err=...
  RESULT ring context=2 ms=... cpu_ms=... temp_mb=... rel_err=...
  RESULT ratio context=2 ring_over_all_gather=...
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


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--contexts", default="2,4,8")
  p.add_argument("--seq-len", type=int, default=4096)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=2)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--window", type=int, default=None)
  p.add_argument("--block", type=int, default=None, help="blockwise block (default: the platform's)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--tol", type=float, default=1e-5)
  a = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from attention import fwd_bwd, inputs, rel_err  # bench/attention.py

  from jaxtune import mesh as mesh_lib
  from jaxtune.models import attention_kernels as kernels
  from jaxtune.models import context_attention as cp

  n = jax.device_count()
  block = a.block or kernels.blockwise_block(jax.default_backend())
  opts = dict(scale=a.head_dim ** -0.5, window=a.window, softcap=None)
  print(f"jax {jax.__version__}, {n} x {jax.devices()[0].device_kind}; seq {a.seq_len}, heads {a.heads}/"
        f"{a.kv_heads} x {a.head_dim}, float32, packed rows, block {block}, window {a.window}", flush=True)
  ok = True
  for C in (int(c) for c in a.contexts.split(",")):
    B = n // C
    args = inputs(B, a.seq_len, a.heads, a.kv_heads, a.head_dim, jnp.float32, packed=True)
    ref = fwd_bwd(functools.partial(kernels.blockwise_attention, block=block, **opts))(*args)
    mesh = mesh_lib.make_mesh(B, 1, 1, context=C)
    ms = {}
    for impl in cp.IMPLS:
      f = functools.partial(kernels.context_parallel_attention, block=block, impl=impl, **opts)
      with jax.set_mesh(mesh):
        fn = fwd_bwd(f)
        compiled = fn.lower(*args).compile()
        out = compiled(*args)
        err = max([rel_err(out[0], ref[0])] + [rel_err(x, y) for x, y in zip(out[1], ref[1])])
        times, cpu = [], []
        for _ in range(a.repeats):
          t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
          jax.block_until_ready(compiled(*args))
          r1 = resource.getrusage(resource.RUSAGE_SELF)
          times.append(time.perf_counter() - t0)
          cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
      temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
      ms[impl], cpu_ms = 1e3 * float(np.median(times)), 1e3 * float(np.median(cpu))
      print(f"RESULT {impl} context={C} ms={ms[impl]:.1f} cpu_ms={cpu_ms:.1f} temp_mb={temp_mb:.1f} "
            f"rel_err={err:.2e}", flush=True)
      ok &= err <= a.tol
    print(f"RESULT ratio context={C} ring_over_all_gather={ms['ring'] / ms['all_gather']:.3f}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
