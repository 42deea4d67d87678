"""`RESULT <name> key=value ...` lines: what every benchmark prints, and how a parent process reads them back
from the child runs it starts (each side of a comparison runs in its own process)."""

from __future__ import annotations

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
