"""The files of a synth job, written so that a killed job resumes where it stopped and ends with the same file.

  OUT.jsonl             one `messages` record per kept sample, in input order
  OUT.jsonl.progress    JSON lines: {"settings": {...}} first, then one row per finished prompt, in input order:
                        {"id", "samples", "passed", "kept", "new_tokens", "truncated", "empty", "no_reference"}
  OUT.jsonl.stats.json  the summary of the whole job, written at its end

A chunk of prompts is finished at a time: its records are appended to OUT (one write call), then its rows to
the progress file. A restarted job reads the progress file: the prompts it lists are done (the runner skips
them, checking their ids against the input), and OUT is cut back to the records they kept, which drops a torn
line or the records of a chunk whose progress rows were never written. Once a prompt is finished, a job
started with other settings than the ones the progress file holds is refused. Files are read as streams:
memory does not grow with them.

A remote OUT (gs://...) is appended to through local mirrors (`io.JsonlLog`) uploaded OUT first, progress
second, every `io.UPLOAD_EVERY_S` and at the end, so the progress file never lists a prompt whose records are
not in OUT. Cutting a remote OUT back on restart rewrites it whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Iterator

from jaxtune import io
from jaxtune.errors import UsageError

log = logging.getLogger(__name__)

PROGRESS = ".progress"
STATS = ".stats.json"
COUNTS = ("samples", "passed", "kept", "new_tokens", "truncated", "empty", "no_reference")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  """(end offset, line) of each newline-terminated line of a file, streamed; a torn last line (no newline)
  is not yielded."""
  offset = 0
  with io.open(path, "rb") as f:
    for line in f:
      if not line.endswith(b"\n"):
        return
      offset += len(line)
      yield offset, line


def _cut(path: str, offset: int) -> None:
  """Truncates a file to its first `offset` bytes (a remote one is rewritten)."""
  if io.is_remote(path):
    with io.open(path, "rb") as f:
      head = f.read(offset)
    io.write_bytes(path, head)
  else:
    os.truncate(path, offset)


def _size(path: str) -> int:
  return io.stat(path)[0]


def _json(obj: Any) -> Any:
  return json.loads(json.dumps(obj))


class JobFiles:
  """OUT, its progress file and its stats, for process 0 (the only writer)."""

  def __init__(self, out: str, settings: dict[str, Any]):
    self.out = os.fspath(out)
    self.progress = self.out + PROGRESS
    self.stats_path = self.out + STATS
    self.settings = _json(settings)
    self._out_log: io.JsonlLog | None = None
    self._progress_log: io.JsonlLog | None = None
    self._last_upload = time.monotonic()

  # -- start / resume ---------------------------------------------------------------------------------------

  def start(self, *, overwrite: bool = False) -> int:
    """Opens the files for appending; returns how many prompts a previous run finished (0 for a new job)."""
    if overwrite:
      for p in (self.out, self.progress, self.stats_path):
        if io.exists(p):
          io.remove(p)
    had_progress = io.exists(self.progress)
    done, kept, progress_end = self._read_progress()
    if done is None:  # a new job (or one killed before its settings row was whole)
      if not had_progress and io.exists(self.out) and _size(self.out) > 0:
        raise UsageError(f"{self.out} exists and is not a synth job's output (no {os.path.basename(self.progress)} "
                         "beside it); pass --overwrite to replace it, or choose another --out")
      for p in (self.out, self.progress):
        if io.exists(p):
          io.remove(p)
    else:
      if _size(self.progress) != progress_end:
        log.warning("%s: dropping a torn last line (a job killed mid-write)", self.progress)
        _cut(self.progress, progress_end)
      self._cut_out(kept)
    self._out_log = io.JsonlLog(self.out, upload_every_s=math.inf)
    self._progress_log = io.JsonlLog(self.progress, upload_every_s=math.inf)
    if done is None:
      self._progress_log.append({"settings": self.settings})
    return done or 0

  def _read_progress(self) -> tuple[int | None, int, int]:
    """(prompts done or None when there is no usable progress file, records they kept, byte offset of the end
    of the last good row)."""
    if not io.exists(self.progress):
      return None, 0, 0
    done, kept, end = None, 0, 0
    for offset, line in _lines(self.progress):
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        break
      if done is None:
        if not isinstance(row, dict) or "settings" not in row:
          break
        old_settings = row["settings"]
        done = 0
      else:
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("kept"), int):
          break
        done, kept = done + 1, kept + row["kept"]
      end = offset
    if done and old_settings != self.settings:
      self._refuse(old_settings)
    return (None if done == 0 else done), kept, end  # nothing finished yet: start afresh, whatever the settings

  def _refuse(self, old: dict[str, Any]) -> None:
    diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} then, {self.settings.get(k)!r} now" for k in diff)
    raise UsageError(f"{self.out} was started with other settings ({shown}); rerun with the same ones to "
                     "resume it, or pass --overwrite to start again, or choose another --out")

  def _cut_out(self, kept: int) -> None:
    """Cuts OUT back to the first `kept` records (the ones the progress file accounts for)."""
    if kept == 0:
      if io.exists(self.out) and _size(self.out) > 0:
        _cut(self.out, 0)
      return
    end, n = 0, 0
    if io.exists(self.out):
      for end, _ in _lines(self.out):
        n += 1
        if n == kept:
          break
    if n < kept:
      raise UsageError(f"{self.out} holds {n} records but {os.path.basename(self.progress)} accounts for {kept}: "
                       "the file was changed outside the job; pass --overwrite to start again")
    if _size(self.out) != end:
      log.warning("%s: dropping records written after the last finished chunk (a job killed mid-write); they "
                  "are generated again", self.out)
      _cut(self.out, end)

  def done_ids(self) -> Iterator[Any]:
    """The ids of the finished prompts, in order, streamed from the progress file (call after `start`)."""
    for i, (_, line) in enumerate(_lines(self.progress)):
      if i > 0:
        yield json.loads(line)["id"]

  # -- writing ----------------------------------------------------------------------------------------------

  def write(self, records: list[dict], rows: list[dict]) -> None:
    """Appends a finished chunk: its records to OUT, then one progress row per prompt."""
    if records:
      self._out_log.append(*records)
    self._progress_log.append(*rows)
    if time.monotonic() - self._last_upload >= io.UPLOAD_EVERY_S:
      self._upload()

  def _upload(self) -> None:
    self._out_log.flush()  # OUT before progress: progress never lists records OUT lacks
    self._progress_log.flush()
    self._last_upload = time.monotonic()

  def close(self) -> None:
    if self._out_log is not None:
      self._upload()
      self._out_log.close()
      self._progress_log.close()
      self._out_log = self._progress_log = None

  # -- summary ----------------------------------------------------------------------------------------------

  def summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stats of the whole job from the progress file (streamed), written to OUT.jsonl.stats.json."""
    totals = dict.fromkeys(COUNTS, 0)
    hist: dict[int, int] = {}
    prompts = 0
    for i, (_, line) in enumerate(_lines(self.progress)):
      if i == 0:
        continue
      row = json.loads(line)
      prompts += 1
      for k in COUNTS:
        totals[k] += int(row.get(k, 0))
      hist[row["kept"]] = hist.get(row["kept"], 0) + 1
    stats = {"prompts": prompts, **totals, "kept_per_prompt": {str(k): hist[k] for k in sorted(hist)},
             **(extra or {}), "settings": self.settings}
    io.write_json(self.stats_path, stats)
    return stats
