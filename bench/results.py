"""`RESULT <name> key=value ...` lines: what every benchmark prints, and how a parent process reads them back
from the child runs it starts (each side of a comparison runs in its own process)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

RESULT_RE = re.compile(r"^RESULT (\w+) (.*)$")


def parse_result(line: str) -> tuple[str, dict[str, float]] | None:
  """(name, {key: value}) of a RESULT line, None for any other line; a value that is not a number
  (`mfu=null` on CPU) reads as NaN."""
  m = RESULT_RE.match(line.strip())
  if not m:
    return None
  vals = {}
  for kv in m.group(2).split():
    k, _, v = kv.partition("=")
    try:
      vals[k] = float(v)
    except ValueError:
      vals[k] = float("nan")
  return m.group(1), vals


def run_child(cmd: list[str], name: str, *, echo: str = "all") -> dict[str, float] | None:
  """Runs a child benchmark process and returns the values of its `RESULT name ...` line (None when it failed
  or printed none). `echo`: "all" copies every line of its output here as it comes, "results" only its RESULT
  line."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
  result = None
  for line in proc.stdout:
    r = parse_result(line)
    mine = r is not None and r[0] == name
    if mine:
      result = r[1]
    if echo == "all" or mine:
      sys.stdout.write(line)
      sys.stdout.flush()
  return result if proc.wait() == 0 else None


def run_side(script: str, side: str, job_path: str, passthrough: list[str]) -> tuple[int, list[dict[str, float]]]:
  """Runs one side ("jaxtune" or "torch") of a jaxtune-vs-torch benchmark `script` in a child process, echoing
  its output but for its own RESULT lines; returns (exit code, those lines' figures, to be printed at the
  end)."""
  env = dict(os.environ)
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  if side == "torch":
    env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, os.path.abspath(script), "--_child", side, "--_job", job_path] + passthrough
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
  results = []
  for line in proc.stdout:
    r = parse_result(line)
    if r and r[0] == side:
      results.append(r[1])
      continue
    sys.stdout.write(line)
    sys.stdout.flush()
  return proc.wait(), results


def compare_sides(script: str, a, job: dict, tmp: str, n_results: int):
  """Both sides of `script` on one job (written to TMP/job.json; each side writes the tokens it decoded to
  `job["out"].SIDE.json`): (ok, jaxtune figures, torch figures, {side: tokens}). `a.no_torch` skips torch;
  ok: every side that ran exited 0 with `n_results` RESULT lines."""
  job_path = os.path.join(tmp, "job.json")
  with open(job_path, "w") as f:
    json.dump(job, f)
  rc, jx = run_side(script, "jaxtune", job_path, a.passthrough)
  rc_t, th = (0, []) if a.no_torch else run_side(script, "torch", job_path, a.passthrough)
  toks = {}
  for side in ("jaxtune", "torch"):
    path = f"{job['out']}.{side}.json"
    if os.path.exists(path):
      with open(path) as f:
        toks[side] = json.load(f)
  ok = rc == 0 and len(jx) == n_results and (a.no_torch or (rc_t == 0 and len(th) == n_results))
  if not ok:
    print(f"a child failed (jaxtune exit {rc}, torch exit {rc_t})", flush=True)
  return ok, jx, th, toks
