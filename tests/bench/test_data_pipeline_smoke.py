"""bench/data_pipeline.py runs end to end on a few records (pipeline and in-process tokenizing stages)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from results import parse_result  # noqa: E402


def test_small_run_prints_results():
  cmd = [sys.executable, os.path.join(ROOT, "bench", "data_pipeline.py"), "--records", "120", "--steps", "5",
         "--seq-len", "1024", "--stages", "pipeline,workers", "--workers", "1"]
  p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  results = dict(r for r in map(parse_result, p.stdout.splitlines()) if r)
  assert set(results) == {"pipeline", "tokenize_workers_1"}
  assert results["pipeline"]["tokens_per_s"] > 0 and 0 < results["pipeline"]["packing_efficiency"] <= 1
  w = results["tokenize_workers_1"]
  assert w["tokens"] > 0 and w["identical"] == 1 and w["cpu_s"] > 0
