"""The one logger of the command line: `jaxtune` (every module logs to a child of it).

`setup()` (called by the CLI) sends INFO lines to stdout and warnings to stderr as
`warning: ...`, both through `tqdm.write` so that they never break a progress bar.
With several processes only process 0 prints INFO; every process prints warnings.
Progress bars come from `progress()`: on process 0 only, silent under `--quiet`,
and when stdout is not a terminal replaced by a one-line summary every `every_s`.
Library use (and pytest) leaves logging alone: records propagate to the root logger.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from typing import Any, Iterable

from tqdm import tqdm

ROOT = "jaxtune"
_QUIET = False


def _process_index() -> int:
  jax = sys.modules.get("jax")
  try:
    return jax.process_index() if jax is not None else 0
  except Exception:  # noqa: BLE001 - a backend not initialised yet: treat as process 0
    return 0


class _Handler(logging.Handler):

  def emit(self, record: logging.LogRecord) -> None:
    try:
      if record.levelno < logging.WARNING:
        if _process_index() == 0 and not _QUIET:
          tqdm.write(self.format(record), file=sys.stdout)
          sys.stdout.flush()
      else:
        prefix = "warning: " if record.levelno < logging.ERROR else "error: "
        tqdm.write(prefix + self.format(record), file=sys.stderr)
    except Exception:  # noqa: BLE001 - logging must never take the program down
      self.handleError(record)


_STATUS_RE = re.compile(r"^[A-Z_]{5,}: ")  # an absl::Status string, as tensorstore's errors start


class _NoLibraryTracebacks(logging.Filter):
  """Drops the error records with tracebacks that Orbax logs from each of its background threads when a
  save or restore fails, and asyncio's "exception was never retrieved" for each tensorstore read that
  failed alongside (some 600 lines for one full disk): jaxtune reports those failures itself, in one line
  (jaxtune.train.checkpoint). JAXTUNE_LOG=DEBUG keeps them."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.exc_info or record.exc_info[1] is None:
      return True
    error, tb = record.exc_info[1], record.exc_info[2]
    if record.name == "asyncio":
      return not _STATUS_RE.match(str(error))
    return not any("/orbax/" in frame.filename for frame in traceback.extract_tb(tb))


def _quiet_closed_loops(unraisable) -> None:
  """sys.unraisablehook that drops what Orbax's abandoned async work raises after an error jaxtune already
  reported: "Event loop is closed" from tensorstore callbacks that complete after Orbax closed the event loop
  of a failed save (dozens of tracebacks on a full disk), and the read coroutines of a failed restore (a
  damaged checkpoint) when they are collected; the rest goes to the default hook."""
  error, obj = unraisable.exc_value, unraisable.object
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  code = getattr(obj, "cr_code", None)
  if code is not None and "/orbax/" in code.co_filename:
    return
  sys.__unraisablehook__(unraisable)


def setup(level: str | int = "INFO", *, quiet: bool = False) -> None:
  """Routes the `jaxtune` logger to stdout/stderr (see the module docstring); other libraries' records go to
  stderr at WARNING and above."""
  global _QUIET
  _QUIET = quiet
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logger = logging.getLogger(ROOT)
  logger.handlers[:] = [_Handler()]
  logger.setLevel(level)
  logger.propagate = False
  debug = str(level).upper() == "DEBUG"
  for name in ("absl", "asyncio"):
    lib = logging.getLogger(name)
    lib.filters[:] = [f for f in lib.filters if not isinstance(f, _NoLibraryTracebacks)]
    if not debug:
      lib.addFilter(_NoLibraryTracebacks())
  sys.unraisablehook = sys.__unraisablehook__ if debug else _quiet_closed_loops


def quiet() -> bool:
  return _QUIET


class progress:  # noqa: N801 - used like tqdm
  """A tqdm bar on process 0 of a terminal; elsewhere (a log file, a pipe) a one-line summary every
  `every_s` seconds and at the end; nothing under `--quiet` or on other processes."""

  def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
               unit: str = "it", initial: float = 0, every_s: float = 30.0, scale: bool = False):
    """`scale`: counts shown with binary prefixes (bytes: 1.5GB, 20.1MB/s)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      total = len(iterable)
    self.iterable, self.total, self.desc, self.unit, self.every_s = iterable, total, desc, unit, every_s
    self.scale = scale
    self.n = self._start = initial
    self._t0 = self._last = time.perf_counter()
    self.postfix = ""
    enabled = _process_index() == 0 and not _QUIET
    self._bar = (tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, unit_scale=scale,
                      unit_divisor=1024 if scale else 1000)
                 if enabled and sys.stdout.isatty() else None)
    self._summaries = enabled and self._bar is None

  def __iter__(self):
    for x in self.iterable:
      yield x
      self.update(1)
    self.close()

  def update(self, n: float = 1) -> None:
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
    elif self._summaries and time.perf_counter() - self._last >= self.every_s:
      self._summary()

  def set_postfix(self, **kw: Any) -> None:
    self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
    if self._bar is not None:
      self._bar.set_postfix(**kw)

  def _summary(self, final: bool = False) -> None:
    self._last = time.perf_counter()
    dt = self._last - self._t0
    rate = (self.n - self._start) / dt if dt > 0 else 0.0
    if self.scale:  # 1.50GB/3.00GB (20.1MB/s)
      done = tqdm.format_sizeof(self.n, self.unit, 1024)
      done += f"/{tqdm.format_sizeof(self.total, self.unit, 1024)}" if self.total else ""
      speed = f"{tqdm.format_sizeof(rate, self.unit, 1024)}/s"
    else:  # 1,234/5,000 rec (152.00 rec/s)
      done = (f"{self.n:,.0f}/{self.total:,.0f}" if self.total else f"{self.n:,.0f}") + f" {self.unit}"
      speed = f"{rate:,.2f} {self.unit}/s"
    eta = f", ETA {max(self.total - self.n, 0) / rate:,.0f}s" if self.total and rate > 0 and not final else ""
    tqdm.write(f"{self.desc + ': ' if self.desc else ''}{done} ({speed}{eta})"
               + (f", {self.postfix}" if self.postfix else "") + (" - done" if final else ""), file=sys.stdout)
    sys.stdout.flush()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._summaries:
      self._summaries = False
      self._summary(final=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
