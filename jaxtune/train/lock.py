"""One `jaxtune train` per run dir: RUN_DIR/lock.json names the holder (host, pid, start time, command).

A local run dir's lock file is held with `fcntl.flock`, which the kernel releases when the holder dies
(kill -9, a crash, a reboot): a lock left by a dead process is free, and the next run takes it over,
saying whose it was. While the holder lives, a second run stops at once with one line naming its host
and pid. The file stays in place (emptied on release): removing it would let a run that opened it just
before lock a file no one else sees.

A remote run dir (gs://...), or a file system without flock, has no such lock: the holder rewrites the
record every HEARTBEAT_S seconds, and a record not rewritten for STALE_S (or held by a process of this host
that is gone) is taken over. Object stores offer no create-if-absent here, so the record is read back after
a pause and the later of two racing writers wins; the other stops.

Multi-host runs: only process 0 (the coordinator) takes the lock; every process stops when it cannot
(`jaxtune.distributed.agree`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Iterator

from jaxtune import io
from jaxtune.errors import ConfigError, TrainingError, UserError

log = logging.getLogger(__name__)

NAME = "lock.json"
HEARTBEAT_S = 60.0
STALE_S = 300.0
SETTLE_S = 1.0  # remote: pause before reading the record back


def describe(rec: dict[str, Any]) -> str:
  return (f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, started {rec.get('started', '?')}"
          + (f": {rec['command']}" if rec.get("command") else ""))


def pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError, TypeError):
    return True  # someone else's process, or not a pid we can judge: assume it lives
  return True


def _record(token: str) -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
          "token": token, "heartbeat": time.time()}


def _parse(raw: bytes) -> dict[str, Any]:
  try:
    rec = json.loads(raw.decode("utf-8")) if raw.strip() else {}
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {}  # a record torn by a crash mid-write
  return rec if isinstance(rec, dict) else {}


class RunLock:
  """`with RunLock(run_dir):` holds the run dir's lock (or raises TrainingError naming the holder)."""

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = io.join(run_dir, NAME)
    self.token = uuid.uuid4().hex
    self._fd: int | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _in_use(self, rec: dict[str, Any]) -> TrainingError:
    return TrainingError(f"run dir {self.run_dir} is in use by another jaxtune train ({describe(rec)}); wait for "
                         f"it to end or stop it, or set another run.dir (the lock is {self.path})")

  def acquire(self) -> RunLock:
    if not io.is_remote(self.path):
      io.makedirs(self.run_dir)
      if self._acquire_flock():
        return self
    self._acquire_heartbeat()
    return self

  # -- local: flock --------------------------------------------------------------------------------------------

  def _acquire_flock(self) -> bool:
    """True when held; False when this file system has no flock (the caller falls back to heartbeats)."""
    import fcntl
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      rec = _parse(os.pread(fd, 1 << 16, 0))
      os.close(fd)
      raise self._in_use(rec) from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
      raise
    prev = _parse(os.pread(fd, 1 << 16, 0))
    if prev.get("pid") is not None:
      log.warning("run dir %s: taking over the lock of %s, which ended without releasing it", self.run_dir,
                  describe(prev))
    data = json.dumps(_record(self.token)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    self._fd = fd
    return True

  # -- remote (or no flock): a record with a heartbeat ----------------------------------------------------------

  def _read(self) -> dict[str, Any]:
    try:
      return _parse(io.read_bytes(self.path)) if io.exists(self.path) else {}
    except FileNotFoundError:
      return {}

  def _stale(self, rec: dict[str, Any]) -> bool:
    if not rec.get("pid"):
      return True
    if rec.get("host") == socket.gethostname() and not pid_alive(rec["pid"]):
      return True
    return time.time() - float(rec.get("heartbeat", 0)) > STALE_S

  def _write(self) -> None:
    io.write_bytes(self.path, json.dumps(_record(self.token)).encode())

  def _acquire_heartbeat(self) -> None:
    rec = self._read()
    if rec and not self._stale(rec):
      raise self._in_use(rec)
    if rec.get("pid"):
      log.warning("run dir %s: taking over the lock of %s (no heartbeat for %.0fs)", self.run_dir, describe(rec),
                  time.time() - float(rec.get("heartbeat", 0)))
    self._write()
    time.sleep(SETTLE_S)
    now = self._read()
    if now.get("token") != self.token:
      raise self._in_use(now)
    self._thread = threading.Thread(target=self._beat, name="jaxtune-run-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        self._write()
      except OSError as e:  # a full or unreachable store: the run goes on; the lock may go stale
        log.warning("run dir %s: could not refresh the lock: %s", self.run_dir, e)

  # -- release ---------------------------------------------------------------------------------------------------

  def release(self) -> None:
    if self._fd is not None:
      try:
        os.ftruncate(self._fd, 0)  # an empty record: released, nobody to take over from
      except OSError:
        pass
      os.close(self._fd)  # closing drops the flock
      self._fd = None
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
      try:
        if self._read().get("token") == self.token:
          io.write_bytes(self.path, b"")
      except OSError as e:
        log.warning("run dir %s: could not release the lock: %s", self.run_dir, e)

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold(run_dir: str) -> Iterator[None]:
  """Holds the run dir's lock for the block: process 0 takes it for every process of the run."""
  import jax

  from jaxtune import distributed
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = RunLock(run_dir).acquire()
    except UserError as e:
      error = e
    except OSError as e:
      error = ConfigError(f"config key 'run.dir': cannot lock {run_dir}: {e.strerror or e}")
  distributed.agree(error, "locking the run dir")
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
