"""Running `jaxtune` as a user would: in a subprocess on one CPU device (or a few fake ones), or in this
process through `jaxtune.cli.main` (cheap cases), with the exit status and output checked the same way."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli_env(devices: int = 1) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def free_port() -> int:
  """A TCP port free on 127.0.0.1 (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cli_cmd(*args) -> list[str]:
  return [sys.executable, "-m", "jaxtune.cli", *args]


def jaxtune(*args, check=True, timeout=600, devices: int = 1):
  p = subprocess.run(cli_cmd(*args), cwd=ROOT, env=cli_env(devices), capture_output=True, text=True,
                     timeout=timeout)
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


@dataclasses.dataclass
class Result:
  """What one `jaxtune` command did: exit status and output."""
  code: int
  out: str
  err: str

  @property
  def errors(self) -> list[str]:
    return [line for line in self.err.splitlines() if line.startswith("error:")]


def run_main(*argv: str) -> Result:
  """`jaxtune ARGV` in this process (through `jaxtune.cli.main`, as the console script runs it): its exit
  status and what it printed. A `SystemExit("error: ...")` is what Python prints and exits 1 with. The
  logging set-up the CLI changes is put back afterwards."""
  import contextlib
  import io
  import logging

  from jaxtune import cli
  saved = {name: (lg.handlers[:], lg.level, lg.propagate, lg.filters[:])
           for name, lg in ((n, logging.getLogger(n)) for n in ("jaxtune", "absl", "asyncio"))}
  out, err = io.StringIO(), io.StringIO()
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = cli.main(list(argv))
      except SystemExit as e:
        code = e.code
  finally:
    for name, (handlers, level, propagate, filters) in saved.items():
      lg = logging.getLogger(name)
      lg.handlers[:], lg.filters[:] = handlers, filters
      lg.setLevel(level)
      lg.propagate = propagate
  text = err.getvalue()
  if isinstance(code, str):
    text += code + "\n"
    code = 1
  return Result(code=0 if code is None else code, out=out.getvalue(), err=text)


def run_sub(*argv: str, timeout: int = 600) -> Result:
  """`jaxtune ARGV` in a subprocess (one CPU device), as `jaxtune` above."""
  p = jaxtune(*argv, check=False, timeout=timeout)
  return Result(code=p.returncode, out=p.stdout, err=p.stderr)


def assert_error(r: Result, *names: str, code: int = 1) -> str:
  """The command failed with `code`, printed exactly one `error:` line holding every one of `names`, and no
  traceback; returns the line."""
  assert r.code == code, f"exit {r.code}, wanted {code}\n{r.out}\n{r.err}"
  assert "Traceback" not in r.err + r.out, r.err
  assert len(r.errors) == 1, r.err
  for name in names:
    assert name in r.errors[0], f"{name!r} not in {r.errors[0]!r}"
  return r.errors[0]


def assert_ok(r: Result) -> None:
  assert r.code == 0 and not r.errors and "Traceback" not in r.err, f"exit {r.code}\n{r.out}\n{r.err}"


def tree_digest(path: str) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `path` (to check that nothing changed)."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, path)] = fh.read()
  return out
