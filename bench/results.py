"""`RESULT <name> key=value ...` lines: what every benchmark prints, and how a parent process reads them back
from the child runs it starts (each side of a comparison runs in its own process)."""

from __future__ import annotations

import re

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
