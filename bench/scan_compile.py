"""Train-step compile time and step time of scanned vs unrolled decoder blocks (`model.scan_layers`), by depth.

For each depth and each mode a child process builds a Llama-shaped model of that many layers (random weights,
the real `jit_train_step` with AdamW, remat `full` as the recipes use), compiles the step ahead of time, and
times a few steps on one packed batch. The shape is narrow so that deep models compile and run on a CPU: what is
measured is how compile time grows with depth, and that scanning leaves the step time unchanged.

  python bench/scan_compile.py --layers 8,32,80 [--hidden 256 --seq-len 256 --batch 2 --steps 3]

  RESULT unrolled layers=8 compile_s=... step_ms=... loss=...
  RESULT scanned layers=8 compile_s=... step_ms=... loss=...
  RESULT ratio layers=8 compile_unrolled_over_scanned=... step_scanned_over_unrolled=...
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import results  # noqa: E402  (bench/ is the script's own dir)

MODES = ("unrolled", "scanned")


def child(a) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from jaxtune import mesh as mesh_lib
  from jaxtune.config import OptimCfg
  from jaxtune.models import ModelConfig, build_model
  from jaxtune.train.optim import make_optimizer
  from jaxtune.train.state import init_state, state_shardings
  from jaxtune.train.step import jit_train_step

  H = 64
  cfg = ModelConfig.for_family("llama", vocab_size=4096, hidden_size=a.hidden, intermediate_size=a.hidden * 3,
                               num_layers=a.layers, num_heads=a.hidden // H, num_kv_heads=max(1, a.hidden // H // 2),
                               head_dim=H, max_position_embeddings=a.seq_len)
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  rng = np.random.default_rng(0)
  T, B = a.seq_len, a.batch
  seg = np.repeat(np.arange(1, 5), T // 4)[None].repeat(B, 0).astype(np.int32)
  pos = np.tile(np.arange(T // 4), 4)[None].repeat(B, 0).astype(np.int32)
  batch = {"input_ids": rng.integers(1, 4096, (B, T)).astype(np.int32), "segment_ids": seg, "positions": pos,
           "loss_mask": np.ones((B, T), np.int32)}
  with jax.set_mesh(mesh):
    model = build_model(cfg, rngs=nnx.Rngs(0), remat=a.remat, attention_impl="auto",
                        scan_layers=a._child == "scanned")
    tx, schedule = make_optimizer(OptimCfg(lr=1e-4), 100)
    graphdef, state = init_state(model, tx)
    del model
    bsh = mesh_lib.batch_sharding(mesh)
    fn = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), bsh)
    b = {k: jax.device_put(jnp.asarray(v), bsh) for k, v in batch.items()}
    t0 = time.perf_counter()
    lowered = fn.lower(state, b)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    state, m = compiled(state, b)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(a.steps):
      t = time.perf_counter()
      state, m = compiled(state, b)
      loss = float(m["loss"])
      times.append(time.perf_counter() - t)
  print(f"RESULT {a._child} layers={a.layers} compile_s={t2 - t0:.2f} trace_lower_s={t1 - t0:.2f} "
        f"xla_compile_s={t2 - t1:.2f} step_ms={1e3 * float(np.median(times)):.1f} loss={loss:.5f}", flush=True)


def run_child(mode: str, layers: int, a) -> dict | None:
  cmd = [sys.executable, os.path.abspath(__file__), "--_child", mode, "--layers", str(layers)] + a.passthrough
  return results.run_child(cmd, mode, echo="results")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--layers", default="8,32,80")
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--seq-len", type=int, default=256)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--remat", default="full", choices=("none", "full", "dots", "dots_no_batch"))
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._child:
    a.layers = int(a.layers)
    child(a)
    return 0
  argv = list(argv if argv is not None else sys.argv[1:])
  a.passthrough = [x for i, x in enumerate(argv) if x != "--layers" and (i == 0 or argv[i - 1] != "--layers")
                   and not x.startswith("--layers=")]
  ok = True
  for n in (int(x) for x in a.layers.split(",")):
    r = {mode: run_child(mode, n, a) for mode in MODES}
    if r["unrolled"] is None or r["scanned"] is None:
      print(f"RESULT failed layers={n}", flush=True)
      ok = False
      continue
    print(f"RESULT ratio layers={n} compile_unrolled_over_scanned="
          f"{r['unrolled']['compile_s'] / r['scanned']['compile_s']:.2f} "
          f"step_scanned_over_unrolled={r['scanned']['step_ms'] / r['unrolled']['step_ms']:.3f}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
