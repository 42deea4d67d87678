"""bench/attention.py checks a fast path against XLA and times both; on CPU with the splash kernel in
interpret mode (cuDNN and real splash need their platforms), and it refuses what the platform cannot run."""

import os
import subprocess
import sys

from tests.helpers.cli import ROOT, cli_env

SCRIPT = os.path.join(ROOT, "bench", "attention.py")


def bench(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=300)


def test_splash_interpret_equals_xla_and_is_timed():
  p = bench("--impl", "splash_interpret", "--batch", "1", "--seq-len", "128", "--heads", "2", "--kv-heads", "1",
            "--head-dim", "64", "--dtype", "float32", "--packed", "--window", "40", "--softcap", "2.0",
            "--repeats", "1")
  assert p.returncode == 0, p.stderr
  lines = {line.split()[1]: dict(kv.split("=") for kv in line.split()[2:])
           for line in p.stdout.splitlines() if line.startswith("RESULT ")}
  assert float(lines["check"]["out_rel_err"]) < 1e-5 and float(lines["check"]["grad_rel_err"]) < 1e-5
  assert float(lines["splash_interpret"]["ms"]) > 0 and float(lines["xla"]["ms"]) > 0
  assert lines["ratio"]["platform"] == "cpu"


def test_cudnn_needs_a_gpu():
  p = bench("--impl", "cudnn", "--seq-len", "128", "--heads", "2", "--kv-heads", "1", "--head-dim", "64")
  assert p.returncode != 0 and "needs a GPU" in p.stderr
