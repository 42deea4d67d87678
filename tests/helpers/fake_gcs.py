"""A fake GCS for gs:// paths in tests: fsspec's in-memory file system registered for the gs/gcs protocols.

`epath.Path("gs://...")` then takes the same code path as with gcsfs installed; like GCS it refuses to
append to an object. Use the `gcs` fixture (tests/conftest.py), which yields the store (object name -> file).
"""

import importlib
import os

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem


@pytest.fixture
def gcs(monkeypatch):
  """A fresh fake GCS for gs:// paths; returns its store (object name -> file)."""

  class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
      path = os.fspath(path)
      for prefix in ("gs://", "gcs://"):
        path = path.removeprefix(prefix)
      return MemoryFileSystem._strip_protocol(path)

    def _open(self, path, mode="rb", **kwargs):
      if "a" in mode:
        raise OSError(f"GCS objects cannot be appended to: {path}")
      return super()._open(path, mode=mode, **kwargs)

  registry = importlib.import_module("fsspec.registry")._registry
  monkeypatch.setitem(registry, "gs", FakeGCS)
  monkeypatch.setitem(registry, "gcs", FakeGCS)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  yield FakeGCS.store
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
