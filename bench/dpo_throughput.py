"""DPO throughput and memory beside SFT on the same rows, and packed vs unpacked DPO, in one invocation.

  python bench/dpo_throughput.py --shape small|micro|llama3.2-1b|llama3.2-3b|HF_DIR [--seq-len N] [--batch B]
      [--dtype float32|bfloat16] [--mesh D,F,T] [--steps N] [--warmup W] [--remat none|full|...]
      [--modes sft,dpo_cached,dpo_live,dpo_unpacked]

Data: random-token preference pairs with a realistic length mix (log-normal prompt and reply lengths, medians
about seq_len/8 and seq_len/6, capped so a pair fits a row), each pair a shared prompt and two replies; the
replies' tokens are trained. Packed rows (whole pairs per row, `jaxtune.data.packing.pack_units`) feed:

  sft           the SFT step on the same rows (the replies' tokens trained: same tokens, same FLOPs)
  dpo_cached    the DPO step (sigmoid) with reference log-probs in the batch (dpo.reference=cached)
  dpo_live      the DPO step with a frozen copy of the weights run in the step (dpo.reference=live)
  dpo_unpacked  the DPO step on the same pairs one side per row (data.packing=False)

Each mode runs in its own child process (peak memory is its own: host RSS on CPU, device peak on GPU). Tokens
are the non-padding tokens of each batch; timing excludes `--warmup` steps and blocks on every step.

Output ends with RESULT lines:
  RESULT <mode> tokens_per_s=... step_ms=... peak_mem_mb=... pairs_per_s=...   (each mode)
  RESULT ratio dpo_cached_over_sft_tokens=... dpo_cached_over_sft_mem=... packed_over_unpacked_tokens=...
        dpo_live_over_sft_tokens=...

GPU (one H100/H200; bf16, the 1B shape at 4k):
  python bench/dpo_throughput.py --shape llama3.2-1b --seq-len 4096 --batch 4 --dtype bfloat16 --remat full
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from results import parse_result  # noqa: E402
from train_throughput import _fmt, _Usage, hf_config_for, host_peak_rss_mb, summarize  # noqa: E402

MODES = ("sft", "dpo_cached", "dpo_live", "dpo_unpacked")


def make_pairs(vocab: int, seq_len: int, n_pairs: int, seed: int = 0):
  """Units of (stored id, ids, mask) for pack_units: a shared prompt and two replies per pair."""
  rng = np.random.default_rng(seed)
  units = []
  for u in range(n_pairs):
    p = int(np.clip(rng.lognormal(np.log(seq_len / 8), 0.6), 4, seq_len // 4))
    prompt = rng.integers(1, vocab, p).astype(np.int32)
    sides = []
    for k in range(2):
      r = int(np.clip(rng.lognormal(np.log(seq_len / 6), 0.6), 2, (seq_len - 2 * p) // 2 - 1))
      ids = np.concatenate([prompt, rng.integers(1, vocab, r).astype(np.int32)])
      sides.append((2 * u + k, ids, np.r_[np.zeros(p), np.ones(r)].astype(np.int32)))
    units.append(sides)
  return units


def make_batches(vocab: int, seq_len: int, batch: int, n_batches: int, packed: bool, seed: int = 0):
  """n_batches batches {field: [n, B, ...]} of B rows, pairs taken in order; `ref_logps` is filled with
  plausible values (their numbers do not change the step's cost)."""
  from jaxtune.data.packing import pack_units, segment_slots
  units = make_pairs(vocab, seq_len, 64 * batch * n_batches // (1 if packed else 2) + 8, seed)
  lengths = np.array([sum(len(s[1]) for s in u) for u in units])
  segments = segment_slots(lengths, 2, seq_len, packed)
  rows = pack_units(units, seq_len, packing=packed, segments=segments,
                    values=-np.abs(np.random.default_rng(seed).normal(50, 10, 2 * len(units))).astype(np.float32))
  need = batch * n_batches
  if rows["input_ids"].shape[0] < need:
    raise SystemExit(f"only {rows['input_ids'].shape[0]} rows for {need}")
  out = {k: v[:need].reshape((n_batches, batch) + v.shape[1:]) for k, v in rows.items()}
  return out


def run_child(a, hf: dict, data: dict[str, np.ndarray], mode: str) -> None:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtune import mesh as mesh_lib
  from jaxtune.config import OptimCfg
  from jaxtune.models import ModelConfig, build_model
  from jaxtune.train.objectives import DPO, SFT
  from jaxtune.train.optim import make_optimizer
  from jaxtune.train.state import init_state, state_shardings
  from jaxtune.train.step import jit_train_step

  cfg = ModelConfig.from_hf(hf)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
  mesh = mesh_lib.make_mesh(*(int(x) for x in a.mesh.split(",")))
  dev = mesh.devices.flat[0]
  objective = SFT() if mode == "sft" else DPO(reference="live" if mode == "dpo_live" else "cached")
  fields = objective.fields
  print(f"[{mode}] jax {jax.__version__} on {jax.device_count()} x {dev.device_kind}; fields {fields}", flush=True)
  with jax.set_mesh(mesh):
    create = lambda: build_model(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32, remat=a.remat)  # noqa: E731
    abstract = nnx.eval_shape(create)
    graphdef, abs_state = nnx.split(abstract)
    params = jax.jit(lambda: nnx.split(create())[1], out_shardings=mesh_lib.state_shardings(abs_state, mesh))()
    model = nnx.merge(graphdef, params)
    frozen = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if objective.has_frozen else None
    tx, schedule = make_optimizer(OptimCfg(lr=1e-6, warmup_steps=0, schedule="constant"), a.steps + a.warmup)
    gdef, state = init_state(model, tx)
    del model, params
    bsh = mesh_lib.batch_sharding(mesh)
    step = jit_train_step(gdef, tx, schedule, 1, state_shardings(state), bsh, objective=objective,
                          frozen_shardings=jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None)
    n = data["input_ids"].shape[0]
    batches = [{k: jax.device_put(data[k][i], bsh) for k in fields} for i in range(n)]
    extra = (frozen,) if frozen is not None else ()
    t0 = time.perf_counter()
    compiled = step.lower(state, batches[0], *extra).compile()
    compile_s = time.perf_counter() - t0
  tokens = [int((data["segment_ids"][i] > 0).sum()) for i in range(n)]
  pairs = [int((data["seq_ids"][i] >= 0).sum()) // 2 for i in range(n)]
  times, toks, prs = [], [], []
  with jax.set_mesh(mesh):
    usage = _Usage()
    for i in range(a.warmup + a.steps):
      if i == a.warmup:
        usage.__enter__()
      t0 = time.perf_counter()
      state, m = compiled(state, batches[i % n], *extra)
      loss = float(m["loss"])
      dt = time.perf_counter() - t0
      if i >= a.warmup:
        times.append(dt)
        toks.append(tokens[i % n])
        prs.append(pairs[i % n])
      print(f"[{mode}] step {i + 1} loss={loss:.4f} step_ms={dt * 1e3:.1f}", flush=True)
    usage.__exit__(None, None, None)
  res = summarize(mode, times, toks, data["input_ids"].shape[1] * data["input_ids"].shape[2])
  if dev.platform == "cpu":
    print(usage.line(mode, a.steps), flush=True)
    peak_mb = host_peak_rss_mb()
  else:
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in mesh.devices.flat]
    peak_mb = max(peaks) / 2**20
  print(f"RESULT {mode} tokens_per_s={res['tokens_per_s']:.2f} step_ms={res['step_ms']:.1f} "
        f"peak_mem_mb={peak_mb:.0f} pairs_per_s={sum(prs) / sum(times):.3f} compile_s={compile_s:.2f}", flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shape", default="small")
  p.add_argument("--seq-len", type=int, default=None)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--mesh", default="1,1,1")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--n-batches", type=int, default=3)
  p.add_argument("--remat", default="none")
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
  a = p.parse_args()
  hf, seq_len, batch = hf_config_for(a.shape)
  a.seq_len, a.batch = a.seq_len or seq_len, a.batch or batch
  if a._child:
    with np.load(a._data) as z:
      data = {k: z[k] for k in z.files}
    run_child(a, hf, data, a._child)
    return
  try:
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; cores {os.cpu_count()}", flush=True)
  except OSError:
    pass
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    files = {}
    for packed in (True, False):
      d = make_batches(hf["vocab_size"], a.seq_len, a.batch, a.n_batches, packed)
      files[packed] = os.path.join(tmp, f"batches_{int(packed)}.npz")
      np.savez(files[packed], **d)
      fill = (d["segment_ids"] > 0).mean()
      print(f"{'packed' if packed else 'unpacked'} rows: {a.batch} x {a.seq_len}, {fill:.1%} of slots hold tokens, "
            f"{(d['seq_ids'] >= 0).sum() // 2 / a.n_batches:.1f} pairs per batch", flush=True)
    for mode in a.modes.split(","):
      argv = [sys.executable, __file__, "--_child", mode, "--_data", files[mode != "dpo_unpacked"]] + \
             [x for x in sys.argv[1:]]
      out = subprocess.run(argv, capture_output=True, text=True)
      sys.stdout.write(out.stdout)
      if out.returncode:
        sys.stdout.write(out.stderr[-3000:])
        raise SystemExit(f"{mode} failed ({out.returncode})")
      for line in out.stdout.splitlines():
        r = parse_result(line)
        if r:
          results[r[0]] = r[1]
  def ratio(a_, b_, k):
    return results[a_][k] / results[b_][k] if a_ in results and b_ in results else float("nan")
  print(f"RESULT ratio dpo_cached_over_sft_tokens={_fmt(ratio('dpo_cached', 'sft', 'tokens_per_s'))} "
        f"dpo_cached_over_sft_mem={_fmt(ratio('dpo_cached', 'sft', 'peak_mem_mb'))} "
        f"packed_over_unpacked_tokens={_fmt(ratio('dpo_cached', 'dpo_unpacked', 'tokens_per_s'))} "
        f"dpo_live_over_sft_tokens={_fmt(ratio('dpo_live', 'sft', 'tokens_per_s'))}", flush=True)


if __name__ == "__main__":
  main()
