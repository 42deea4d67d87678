"""bench/train_throughput.py runs end to end on a micro shape (jaxtune and the torch reference, 2 steps)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import train_throughput as tt  # noqa: E402


def test_micro_two_steps_vs_torch():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # one CPU device, not the 8 fake devices of tests/conftest.py
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, os.path.join(ROOT, "bench", "train_throughput.py"), "--shape", "micro", "--steps", "2",
         "--warmup", "0", "--n-batches", "1", "--vs-torch"]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  lines = p.stdout.strip().splitlines()
  results = dict(r for r in map(tt.parse_result, lines) if r)
  assert set(results) == {"jaxtune", "torch", "ratio"}, lines[-5:]
  jx, th = results["jaxtune"], results["torch"]
  assert set(jx) == {"tokens_per_s", "step_ms", "mfu", "peak_mem_mb", "compile_s"}
  assert set(th) == {"tokens_per_s", "step_ms", "peak_mem_mb"}
  for r in (jx, th):
    assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["peak_mem_mb"] > 0
  assert jx["compile_s"] > 0
  assert results["ratio"]["jaxtune_over_torch"] == pytest.approx(jx["tokens_per_s"] / th["tokens_per_s"], rel=1e-2)
  assert lines[-1].startswith("RESULT ratio ")
  # Both sides trained on the same batch: their first-step losses (random init, vocab 256) are near ln(256).
  losses = [float(l.split("loss=")[1].split()[0]) for l in lines if " step 1/" in l]
  assert len(losses) == 2 and all(abs(x - 5.545) < 0.3 for x in losses), losses


def test_batches_are_packed_with_loss_targets():
  d = tt.make_batches(vocab=100, seq_len=64, batch=3, n_batches=2, seed=1)
  assert d["input_ids"].shape == (2, 3, 64) and d["weights"].shape == (2, 3, 63)
  seg = d["segment_ids"]
  assert (seg > 0).mean() > 0.8 and seg.max() > 1  # several examples per row, few pad slots
  # a target is never the first token of its segment, nor padding
  tgt_seg, prev_seg = seg[..., 1:], seg[..., :-1]
  w = d["weights"] > 0
  assert w.any() and (tgt_seg[w] == prev_seg[w]).all() and (tgt_seg[w] > 0).all()
  assert (d["loss_mask"][..., 1:][w] == 1).all()
