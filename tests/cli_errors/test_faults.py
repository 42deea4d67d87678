"""Issue 18, class 6: faults while running. A full disk stops the run with `saving checkpoint N failed: No
space left on device`, the previous checkpoint kept and restorable, a non-zero exit and a few lines (not
Orbax's hundreds); a read-only run dir is refused before any data is read; an export that runs out of space
leaves the previous export as it was.

The disks are real: small tmpfs mounts in a private mount namespace (`unshare -m`, as root, or `unshare -rm`),
so that tensorstore's own writes fail as they would on a full disk. Where no mount namespace can be made,
the full disk is a per-process file-size limit (RLIMIT_FSIZE, EFBIG "File too large") and the read-only dir
a monkeypatched probe write.
"""

from __future__ import annotations

import errno
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import cli
from tests.helpers.cli import ROOT, Result, assert_error, assert_ok, run_main, tree_digest

UNSHARE = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


def can_mount() -> bool:
  if os.environ.get("JAXTUNE_TEST_NO_MOUNT"):
    return False
  with tempfile.TemporaryDirectory() as d:
    p = subprocess.run([*UNSHARE, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {d}"], capture_output=True)
    return p.returncode == 0


def in_namespace(script: str, timeout: int = 600) -> None:
  """Runs a shell script in a private mount namespace (its mounts vanish with it), from the checkout."""
  p = subprocess.run([*UNSHARE, "sh", "-ec", script], cwd=ROOT, env=cli.cli_env(), capture_output=True, text=True,
                     timeout=timeout)
  assert p.returncode == 0, p.stdout + p.stderr


def jaxtune_into(out: str, name: str, *argv: str) -> str:
  """A shell line running `jaxtune ARGV` with its output and exit status saved as OUT/NAME.{out,err,rc}."""
  cmd = " ".join(shlex.quote(a) for a in cli.cli_cmd(*argv))
  return f"{cmd} > {out}/{name}.out 2> {out}/{name}.err && echo 0 > {out}/{name}.rc || echo $? > {out}/{name}.rc"


def result(out: str, name: str) -> Result:
  read = lambda ext: open(os.path.join(out, f"{name}.{ext}")).read()  # noqa: E731
  return Result(code=int(read("rc")), out=read("out"), err=read("err"))


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="mount namespaces and RLIMIT_FSIZE are Linux's")


def test_full_disk_read_only_run_dir_and_full_export(tiny_run, tmp_path, monkeypatch):
  if not can_mount():
    return _without_mounts(tiny_run, tmp_path, monkeypatch)
  out, disk, ro, small = tmp_path / "out", tmp_path / "disk", tmp_path / "ro", tmp_path / "small"
  for d in (out, disk, ro, small):
    d.mkdir()
  old = tmp_path / "old_export"  # an export that the failing one would replace
  os.makedirs(old)
  (old / "config.json").write_text('{"old": true}')
  (old / "model.safetensors").write_bytes(b"old weights")
  in_namespace("\n".join([
      f"mount -t tmpfs -o size=2m tmpfs {disk}",  # the first checkpoint (~1.4 MB) fits, the second does not
      jaxtune_into(out, "train", "train", tiny_run.config, f"--config.run.dir={disk}/run", "--config.train.steps=40",
                   "--config.checkpoint.every=3"),
      f"ls {disk}/run/checkpoints > {out}/left.txt",
      jaxtune_into(out, "after", "export", "--run", f"{disk}/run", "--out", f"{out}/hf"),
      f"mount -t tmpfs -o ro,size=1m tmpfs {ro}",
      jaxtune_into(out, "ro", "train", tiny_run.config, f"--config.run.dir={ro}/run"),
      f"mount -t tmpfs -o size=200k tmpfs {small}",  # room for the old export, not for the new one
      f"cp -r {old} {small}/hf",
      jaxtune_into(out, "export", "export", "--run", tiny_run.run_abs, "--out", f"{small}/hf", "--overwrite"),
      f"cp -r {small}/hf {out}/kept_export",
      f"ls -a {small} > {out}/small.txt",
  ]))

  r = result(out, "train")
  assert_error(r, "saving checkpoint 6 failed: No space left on device", "checkpoint 3 is kept")
  assert len(r.err.splitlines()) < 10, r.err  # not Orbax's threads
  assert "train: 40/40" not in r.out  # stopped soon after the failed save, not at the end
  assert open(out / "left.txt").read().split() == ["3"]  # the partial step 6 is gone, freeing its space
  assert_ok(result(out, "after"))  # checkpoint 3 restores (and exports)

  r = result(out, "ro")
  assert_error(r, "'run.dir'", "cannot write", "Read-only file system")
  assert "data:" not in r.out

  r = result(out, "export")
  assert_error(r, "writing the export", "No space left on device", "is as it was")
  assert tree_digest(str(out / "kept_export")) == tree_digest(str(old))
  assert open(out / "small.txt").read().split() == [".", "..", "hf"]  # no half-written sibling left


def _without_mounts(tiny_run, tmp_path, monkeypatch):
  """No mount namespace here: a file-size limit stands for the full disk, a failing probe write for a
  read-only file system."""
  run = tmp_path / "run"

  def limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))  # params fit, the optimizer moments do not

  p = subprocess.run(cli.cli_cmd("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.steps=40",
                                 "--config.checkpoint.every=3"), cwd=ROOT, env=cli.cli_env(), capture_output=True,
                     text=True, timeout=600, preexec_fn=limit)
  r = Result(code=p.returncode, out=p.stdout, err=p.stderr)
  assert_error(r, "saving checkpoint 3 failed: File too large", "no checkpoint was kept")
  assert len(r.err.splitlines()) < 10, r.err
  assert not any(n.startswith("3") for n in os.listdir(run / "checkpoints"))

  from jaxtune.train import preflight

  def read_only(*a, **kw):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  monkeypatch.setattr(preflight.tempfile, "mkstemp", read_only)  # the probe write of the run-dir check
  r = run_main("train", tiny_run.config, f"--config.run.dir={tmp_path / 'ro'}")
  monkeypatch.undo()
  assert_error(r, "'run.dir'", "cannot write", "Read-only file system")
  assert "data:" not in r.out
