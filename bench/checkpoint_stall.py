"""How long the train loop stalls when an async Orbax checkpoint starts (issue 6).

Builds a ~100M-parameter Llama-shaped model on CPU, runs the real jitted train
step, and times (a) `save()` returning, (b) the step right after a save versus
steady-state steps, for async and sync saves. Prints one RESULT line.

  python bench/checkpoint_stall.py [--layers 8 --hidden 768 --vocab 32000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import OptimCfg
from jaxtune.models import ModelConfig, build_model
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, param_count, state_shardings
from jaxtune.train.step import jit_train_step


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--hidden", type=int, default=768)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--saves", type=int, default=3)
  a = p.parse_args()
  cfg = ModelConfig(family="llama", vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3,
                    num_layers=a.layers, num_heads=a.hidden // 64, num_kv_heads=a.hidden // 128,
                    max_position_embeddings=a.seq_len)
  mesh = mesh_lib.make_mesh(1, 1, 1)
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(0, a.vocab, (a.batch, a.seq_len)).astype(np.int32),
           "segment_ids": np.ones((a.batch, a.seq_len), np.int32),
           "positions": np.tile(np.arange(a.seq_len, dtype=np.int32), (a.batch, 1)),
           "loss_mask": np.ones((a.batch, a.seq_len), np.int32)}
  with jax.set_mesh(mesh):
    model = build_model(cfg, rngs=nnx.Rngs(0))
    tx, schedule = make_optimizer(OptimCfg(lr=1e-4), 100)
    graphdef, state = init_state(model, tx)
    del model
    step = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), mesh_lib.batch_sharding(mesh))
    n = param_count(state.params)
    state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    print(f"params {n / 1e6:.1f}M, train state {state_mb:.0f} MiB")

    def one(s):
      t = time.perf_counter()
      s, m = step(s, batch)
      jax.block_until_ready(m["loss"])
      return s, time.perf_counter() - t

    state, _ = one(state)  # compile
    results = {}
    for mode in ("async", "sync"):
      with tempfile.TemporaryDirectory() as d:
        mgr = ckpt_lib.make_manager(d, keep=2, async_save=mode == "async")
        base, ret, after = [], [], []
        for _ in range(a.saves + 1):
          for _ in range(3):
            state, dt = one(state)
            base.append(dt)
          t = time.perf_counter()
          ckpt_lib.save(mgr, state, None, {"config": {}})
          ret.append(time.perf_counter() - t)
          state, dt = one(state)
          after.append(dt)
          mgr.wait_until_finished()
        mgr.close()
      # The first save also creates directories and warms Orbax up: report it apart.
      first, ret = ret[0], ret[1:]
      med_base = statistics.median(base)
      stall = [r + x - med_base for r, x in zip(ret, after[1:])]
      results[mode] = statistics.median(stall)
      print(f"{mode}: save() returned in median {statistics.median(ret):.3f}s (first {first:.3f}s; "
            f"min {min(ret):.3f} max {max(ret):.3f}); step after save {statistics.median(after[1:]):.3f}s vs "
            f"steady {med_base:.3f}s; stall (save return + extra step time) median {results[mode]:.3f}s")
  print(f"RESULT checkpoint_stall params_m={n / 1e6:.1f} async_stall_s={results['async']:.3f} "
        f"sync_stall_s={results['sync']:.3f} device={jax.devices()[0].device_kind}")


if __name__ == "__main__":
  main()
