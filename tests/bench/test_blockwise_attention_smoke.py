"""bench/blockwise_attention.py checks blockwise against dense, then times both and reports their memory."""

import os
import subprocess
import sys

from tests.helpers.cli import ROOT, cli_env

sys.path.insert(0, os.path.join(ROOT, "bench"))
from results import parse_result  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "blockwise_attention.py")


def test_blockwise_bench_checks_and_times_both():
  p = subprocess.run([sys.executable, SCRIPT, "--seq-lens", "128", "--heads", "2", "--kv-heads", "1", "--head-dim",
                      "16", "--window", "40", "--softcap", "2.0", "--repeats", "1"],
                     cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout + p.stderr
  results = {}
  for line in p.stdout.splitlines():
    r = parse_result(line)
    if r:
      results[r[0]] = r[1]
  assert "max rel err" in p.stdout
  assert results["dense"]["seq"] == results["blockwise"]["seq"] == 128
  assert results["dense"]["ms"] > 0 and results["blockwise"]["ms"] > 0 and results["blockwise"]["temp_mb"] > 0
  assert results["ratio"]["dense_over_blockwise"] > 0
