"""Running `jaxtune` in a subprocess on one CPU device, as a user would."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli_env() -> dict:
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def free_port() -> int:
  """A TCP port free on 127.0.0.1 (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cli_cmd(*args) -> list[str]:
  return [sys.executable, "-m", "jaxtune.cli", *args]


def jaxtune(*args, check=True, timeout=600):
  p = subprocess.run(cli_cmd(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)
  if check and p.returncode != 0:
    raise AssertionError(f"jaxtune {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
  return p


def start(*args, log_path: str) -> subprocess.Popen:
  f = open(log_path, "w")
  return subprocess.Popen(cli_cmd(*args), cwd=ROOT, env=cli_env(), stdout=f, stderr=subprocess.STDOUT)


def metrics(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def chat_records(n=48, seed=0):
  words = ["apple", "river", "stone", "cloud", "green", "light", "music", "table"]
  out = []
  for i in range(n):
    a, b = words[(i + seed) % 8], words[(i * 3 + 1 + seed) % 8]
    msgs = [{"role": "user", "content": f"Join {a} and {b}."}, {"role": "assistant", "content": f"{a} {b}"}]
    if i % 3 == 0:
      msgs = [{"role": "system", "content": "Be brief."}] + msgs + [
          {"role": "user", "content": "Again?"}, {"role": "assistant", "content": f"{b} {a}"}]
    out.append(json.dumps({"messages": msgs}))
  return out
