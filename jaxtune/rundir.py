"""Everything a run dir holds besides its checkpoints, on a local path or any URL epath opens.

`config.json`, `hf_source/`, `metrics.jsonl`, `samples.jsonl` and the TensorBoard events go
through here, so `run.dir` may be `gs://bucket/run` (or `s3://...`) as well as a local dir;
checkpoints go through Orbax, which takes the same paths. Object stores cannot append to an
object (a GCS object is immutable), so logs are written to a local mirror and uploaded whole,
at most every `upload_every_s` seconds and on `flush`/`close`. A local run dir is written in
place: the mirror is the file itself and nothing is uploaded.

Readers that need a real directory (transformers' tokenizer loading) use `local_copy`.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

from etils import epath

log = logging.getLogger(__name__)

UPLOAD_EVERY_S = 10.0  # a GCS object takes about one update per second; logs need no more than this


def is_remote(path: epath.PathLike) -> bool:
  return "://" in os.fspath(path)


def join(path: epath.PathLike, *parts: str) -> str:
  return os.fspath(epath.Path(path).joinpath(*parts))


def exists(path: epath.PathLike) -> bool:
  return epath.Path(path).exists()


def read_text(path: epath.PathLike) -> str:
  return epath.Path(path).read_bytes().decode("utf-8")


def write_text(path: epath.PathLike, text: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode("utf-8"))


def read_json(path: epath.PathLike) -> Any:
  return json.loads(read_text(path))


def write_json(path: epath.PathLike, obj: Any, **dumps_kwargs) -> None:
  write_text(path, json.dumps(obj, indent=2, **dumps_kwargs))


def copy_file(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies one file between any two stores (local -> gs://, gs:// -> local, ...), overwriting."""
  dst = epath.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  epath.Path(src).copy(dst, overwrite=True)


def copy_tree(src: epath.PathLike, dst: epath.PathLike) -> None:
  """Copies the files under `src` to `dst` (merged into what is there), between any two stores."""
  src, dst = epath.Path(src), epath.Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():  # no walk()/rglob(): epath refuses `**` on gs:// and walk() drops the scheme
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name, overwrite=True)


def _temp_dir() -> str:
  d = tempfile.mkdtemp(prefix="jaxtune-rundir-")
  atexit.register(shutil.rmtree, d, ignore_errors=True)
  return d


def local_copy(path: epath.PathLike) -> str:
  """A local path holding `path` (a file or a dir): `path` itself when local, else a download
  into a temp dir removed at exit."""
  if not is_remote(path):
    return os.fspath(path)
  src = epath.Path(path)
  if not src.exists():
    raise FileNotFoundError(f"{path} does not exist")
  out = os.path.join(_temp_dir(), src.name)
  if src.is_dir():
    copy_tree(src, out)
  else:
    copy_file(src, out)
  return out


class LocalDir:
  """A local directory standing for `target`: `target` itself when local, else a temp dir whose
  new and changed files `sync()` uploads (at most every `upload_every_s` unless forced) and
  `close()` uploads at last. Used for hf_source/ (`with LocalDir(...) as d: save into d.path`)
  and for TensorBoard event files."""

  def __init__(self, target: epath.PathLike, *, upload_every_s: float = UPLOAD_EVERY_S):
    self.target = os.fspath(target)
    self.remote = is_remote(self.target)
    self.path = _temp_dir() if self.remote else self.target
    os.makedirs(self.path, exist_ok=True)
    self._every, self._last = upload_every_s, -math.inf
    self._uploaded: dict[str, tuple[int, int]] = {}

  def sync(self, *, force: bool = False) -> None:
    if not self.remote or (not force and time.monotonic() - self._last < self._every):
      return
    self._last = time.monotonic()
    for root, _, files in os.walk(self.path):
      for name in files:
        local = os.path.join(root, name)
        rel = os.path.relpath(local, self.path)
        st = os.stat(local)
        key = (st.st_size, st.st_mtime_ns)  # taken before the copy: a file still growing is sent again
        if self._uploaded.get(rel) != key:
          copy_file(local, join(self.target, *rel.split(os.sep)))
          self._uploaded[rel] = key

  def close(self) -> None:
    self.sync(force=True)

  def __enter__(self) -> LocalDir:
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.close()


class JsonlLog:
  """An append-only JSON-lines file (metrics.jsonl, samples.jsonl). A local file is appended to and
  flushed at every `append`. A remote object is mirrored in a local file, seeded with the object's
  rows (a resumed run keeps them), and rewritten whole by `flush`, which `append` calls at most
  every `upload_every_s` (the first rows at once) and `close` always."""

  def __init__(self, path: epath.PathLike, *, upload_every_s: float = UPLOAD_EVERY_S):
    self.path = os.fspath(path)
    self.remote = is_remote(self.path)
    if self.remote:
      self._mirror = os.path.join(_temp_dir(), os.path.basename(self.path))
      if exists(self.path):
        copy_file(self.path, self._mirror)
    else:
      self._mirror = self.path
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._f = open(self._mirror, "a", encoding="utf-8")
    self._every, self._last, self._dirty = upload_every_s, -math.inf, False

  def append(self, *rows: dict[str, Any]) -> None:
    for row in rows:
      self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
    self._f.flush()
    self._dirty = True
    if self.remote and time.monotonic() - self._last >= self._every:
      self.flush()

  def flush(self) -> None:
    self._f.flush()
    if self.remote and self._dirty:
      copy_file(self._mirror, self.path)
    self._dirty, self._last = False, time.monotonic()

  def close(self) -> None:
    if self._f is not None:
      self.flush()
      self._f.close()
      self._f = None


def _lines(path: epath.PathLike):
  """(line, row) for each line of a JSON-lines file; a torn last line (a run killed mid-write) is dropped."""
  for line in read_text(path).split("\n"):  # not splitlines(): rows may hold U+2028 and the like
    if line.strip():
      try:
        yield line, json.loads(line)
      except json.JSONDecodeError:
        log.warning("%s: dropping an unreadable line (a run killed mid-write?): %.80s", path, line)


def read_jsonl(path: epath.PathLike) -> list[dict[str, Any]]:
  return [row for _, row in _lines(path)]


def truncate_jsonl(path: epath.PathLike, step: int) -> None:
  """Drops the rows of a JSON-lines file whose "step" is past `step` (a resumed run logs them again)."""
  if exists(path):
    write_text(path, "".join(line + "\n" for line, row in _lines(path) if row.get("step", 0) <= step))
