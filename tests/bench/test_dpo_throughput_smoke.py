"""bench/dpo_throughput.py runs end to end on a micro shape (SFT and cached-reference DPO, one step each)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from results import parse_result  # noqa: E402


def test_micro_sft_and_dpo():
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # one CPU device
  cmd = [sys.executable, os.path.join(ROOT, "bench", "dpo_throughput.py"), "--shape", "micro", "--steps", "1",
         "--warmup", "0", "--n-batches", "1", "--modes", "sft,dpo_cached"]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  results = dict(r for r in map(parse_result, p.stdout.splitlines()) if r)
  assert set(results) == {"sft", "dpo_cached", "ratio"}
  for mode in ("sft", "dpo_cached"):
    assert results[mode]["tokens_per_s"] > 0 and results[mode]["peak_mem_mb"] > 0
  assert results["ratio"]["dpo_cached_over_sft_tokens"] > 0
