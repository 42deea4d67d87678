"""The one file-system layer: local paths and URLs (gs://, s3://, ...) through the same calls.

Every file jaxtune reads or writes outside Orbax (data sources, pre-tokenized
files, caches, run-dir files, eval prompts) goes through here, built on
`etils.epath`, so a remote path needs nothing but the right fsspec backend
installed (`pip install 'jaxtune[gcs]'` for gs://).

Object stores cannot append to an object (a GCS object is immutable), so logs
are written to a local mirror and uploaded whole (`JsonlLog`), and directories
that libraries fill in place (TensorBoard events, a tokenizer's files) are local
temp dirs uploaded on `sync` (`LocalDir`). Readers that need a real local path
(transformers' tokenizer loading, the ArrayRecord reader) use `local_copy`.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import glob as _glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import IO, Any, Iterator

from etils import epath

from jaxtune.errors import MissingPathError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
UPLOAD_EVERY_S = 10.0  # a GCS object takes about one update per second; logs need no more than this


def is_remote(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def Path(path: PathLike) -> epath.Path:  # noqa: N802 - reads like the class it returns
  """An epath.Path; a missing fsspec backend (gcsfs, s3fs) is named in the error."""
  try:
    return epath.Path(path)
  except ImportError as e:
    raise ImportError(f"cannot open {os.fspath(path)!r}: {e} (gs:// paths need `pip install 'jaxtune[gcs]'`)") from e


def join(path: PathLike, *parts: str) -> str:
  return os.fspath(Path(path).joinpath(*parts))


def abspath(path: PathLike) -> str:
  """A local path made absolute (Orbax refuses relative ones); a URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def exists(path: PathLike) -> bool:
  return Path(path).exists()


def is_dir(path: PathLike) -> bool:
  return Path(path).is_dir()


def is_file(path: PathLike) -> bool:
  return Path(path).is_file()


def listdir(path: PathLike) -> list[str]:
  """The entries of a directory as full paths, sorted."""
  return sorted(os.fspath(p) for p in Path(path).iterdir())


def has_magic(path: PathLike) -> bool:
  return _glob.has_magic(os.fspath(path))


def glob(pattern: PathLike) -> list[str]:
  """Paths matching a glob pattern (magic in any component after the bucket), sorted."""
  pattern = os.fspath(pattern)
  if not is_remote(pattern):
    return sorted(_glob.glob(pattern))
  parts = pattern.split("/")
  first = next(i for i, part in enumerate(parts) if _glob.has_magic(part))
  base, rest = "/".join(parts[:first]), "/".join(parts[first:])
  return sorted(os.fspath(p) for p in Path(base).glob(rest))


def open(path: PathLike, mode: str = "rb") -> IO:  # noqa: A001 - the module's open, like gzip.open
  return Path(path).open(mode)


def read_bytes(path: PathLike) -> bytes:
  return Path(path).read_bytes()


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def makedirs(path: PathLike) -> None:
  Path(path).mkdir(parents=True, exist_ok=True)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes a whole file so that readers never see half of it: a local file through a temp file renamed
  into place, a remote object in one upload (object stores publish whole objects)."""
  path = os.fspath(path)
  parent = os.path.dirname(path) if not is_remote(path) else None
  if parent is None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return
  os.makedirs(parent or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=parent or ".", prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any, **dumps_kwargs) -> None:
  write_text(path, json.dumps(obj, indent=2, **dumps_kwargs))


def stat(path: PathLike) -> tuple[int, int]:
  """(size, mtime) of a file, for cache keys: mtime in ns locally, in what the store keeps remotely."""
  if is_remote(path):
    st = Path(path).stat()
    return int(st.length), int(st.mtime)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def remove(path: PathLike) -> None:
  Path(path).unlink()


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies one file between any two stores (local -> gs://, gs:// -> local, ...), overwriting."""
  dst = Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  Path(src).copy(dst, overwrite=True)


def copy_tree(src: PathLike, dst: PathLike) -> None:
  """Copies the files under `src` to `dst` (merged into what is there), between any two stores."""
  src, dst = Path(src), Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():  # no walk()/rglob(): epath refuses `**` on gs:// and walk() drops the scheme
    if child.is_dir():
      copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name, overwrite=True)


@contextlib.contextmanager
def staged_dir(path: PathLike, *, enabled: bool = True) -> Iterator[str]:
  """A local directory written whole or not at all: the block fills a temporary sibling
  (`.NAME.XXXX.partial`), which then replaces `path` by renames (an old `path` is moved aside
  first and removed last). When the block raises, the sibling is removed and `path` is untouched.
  With `enabled=False` (processes that join a collective write without writing) it yields `path`
  and does nothing."""
  path = os.path.abspath(os.fspath(path))
  if not enabled:
    yield path
    return
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".partial")
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a plain mkdir
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if os.path.lexists(path):
    old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".old")
    os.rename(path, os.path.join(old, name))
  os.rename(tmp, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def is_within(path: PathLike, other: PathLike) -> bool:
  """Whether local `path` is `other` or lies inside it (symlinks resolved)."""
  a, b = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(other))
  return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def temp_dir(prefix: str = "jaxtune-") -> str:
  """A local temp dir removed at exit."""
  d = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, d, ignore_errors=True)
  return d


def local_copy(path: PathLike) -> str:
  """A local path holding `path` (a file or a dir): `path` itself when local, else a download into a temp
  dir removed at exit."""
  if not is_remote(path):
    return os.fspath(path)
  src = Path(path)
  if not src.exists():
    raise MissingPathError(f"{os.fspath(path)} does not exist")
  out = os.path.join(temp_dir(), src.name)
  if src.is_dir():
    copy_tree(src, out)
  else:
    copy_file(src, out)
  return out


@contextlib.contextmanager
def local_file_for_writing(path: PathLike) -> Iterator[str]:
  """A local path to write a whole file into (for writers that only take local paths): `path` itself when
  local, else a temp file uploaded to `path` when the block ends without an error."""
  path = os.fspath(path)
  if not is_remote(path):
    if os.path.dirname(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
    yield path
    return
  local = os.path.join(temp_dir(), os.path.basename(path))
  yield local
  copy_file(local, path)


class LocalDir:
  """A local directory standing for `target`: `target` itself when local, else a temp dir whose new and
  changed files `sync()` uploads (at most every `upload_every_s` unless forced) and `close()` uploads at
  last. Used for hf_source/ (`with LocalDir(...) as d: save into d.path`) and TensorBoard event files."""

  def __init__(self, target: PathLike, *, upload_every_s: float = UPLOAD_EVERY_S):
    self.target = os.fspath(target)
    self.remote = is_remote(self.target)
    self.path = temp_dir() if self.remote else self.target
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
  """An append-only JSON-lines file (metrics.jsonl, samples.jsonl). A local file is appended to and flushed
  at every `append`. A remote object is mirrored in a local file, seeded with the object's rows (a resumed
  run keeps them), and rewritten whole by `flush`, which `append` calls at most every `upload_every_s` (the
  first rows at once) and `close` always."""

  def __init__(self, path: PathLike, *, upload_every_s: float = UPLOAD_EVERY_S):
    self.path = os.fspath(path)
    self.remote = is_remote(self.path)
    if self.remote:
      self._mirror = os.path.join(temp_dir(), os.path.basename(self.path))
      if exists(self.path):
        copy_file(self.path, self._mirror)
    else:
      self._mirror = self.path
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._f = builtins.open(self._mirror, "a", encoding="utf-8")
    self._every, self._last, self._dirty = upload_every_s, -math.inf, False

  @property
  def local_path(self) -> str:
    """The local file the rows go to (the path itself, or the mirror of a remote one)."""
    return self._mirror

  def append(self, *rows: dict[str, Any]) -> None:
    """Appends the rows in one write call (a process killed around it leaves whole lines)."""
    self._f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
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


def jsonl_lines(path: PathLike) -> Iterator[tuple[str, Any]]:
  """(line, row) for each line of a JSON-lines file; a torn last line (a process killed mid-write) is
  dropped with a warning."""
  for line in read_text(path).split("\n"):  # not splitlines(): rows may hold U+2028 and the like
    if line.strip():
      try:
        yield line, json.loads(line)
      except json.JSONDecodeError:
        log.warning("%s: dropping an unreadable line (a process killed mid-write?): %.80s", path, line)


def read_jsonl(path: PathLike) -> list[Any]:
  return [row for _, row in jsonl_lines(path)]
