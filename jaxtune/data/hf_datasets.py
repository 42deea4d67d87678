"""Hugging Face `datasets` sources: `save_to_disk` directories and hub dataset ids.

Both need the optional `datasets` package (`pip install datasets`, or the
`datasets` extra of jaxtune); every other source works without it.

  a directory holding `dataset_info.json` + `state.json` (a Dataset) or
  `dataset_dict.json` (a DatasetDict; `split` picks one, default "train") is read
  with `datasets.load_from_disk` (local or remote, gs://... through fsspec);

  `hf:OWNER/NAME` (or a bare `OWNER/NAME` that is not a local path) is streamed with
  `datasets.load_dataset(OWNER/NAME, subset or None, split=split or "train", streaming=True)`:
  rows arrive as they are read, nothing is downloaded whole or kept on disk; it needs
  network access. Its cache fingerprint (`data.cache_dir`) is the dataset repo's
  current revision (`huggingface_hub`), so a second run reads the cache and streams
  nothing, until the dataset changes.

Rows are read as Arrow batches and converted to Python dicts, like Parquet rows.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

from jaxtune.errors import DataError

HUB_PREFIX = "hf:"
DISK_MARKERS = ("dataset_info.json", "state.json")
DICT_MARKER = "dataset_dict.json"
_BATCH = 1024


class DatasetsUnavailable(ImportError):
  """The optional `datasets` package is missing."""


def _datasets():
  try:
    import datasets
  except ImportError as e:
    raise DatasetsUnavailable(
        "reading Hugging Face datasets (save_to_disk directories, hub dataset ids) needs the optional "
        "'datasets' package: pip install datasets (or jaxtune[datasets])") from e
  return datasets


def hub_id(path: str) -> str:
  return path[len(HUB_PREFIX):] if path.startswith(HUB_PREFIX) else path


def load(path: str, kind: str, split: str = "", subset: str = ""):
  """The dataset of a source: a save_to_disk directory's `datasets.Dataset` (memory-mapped,
  read afresh each time) or a hub dataset's `datasets.IterableDataset` (streamed; memoised
  in this process)."""
  ds = _datasets()
  if kind != "hf_disk":
    return _load_hub(path, split, subset)
  try:
    d = ds.load_from_disk(path)
  except Exception as e:  # noqa: BLE001 - re-raised with the path and the cause
    raise DataError(f"data source {path!r}: datasets.load_from_disk failed: {type(e).__name__}: {e}") from e
  if subset:
    raise DataError(f"data source {path!r}: 'subset' applies to hub datasets only")
  if isinstance(d, ds.DatasetDict):
    name = split or "train"
    if name not in d:
      raise DataError(f"data source {path!r} is a DatasetDict without split {name!r}; "
                       f"its splits: {sorted(d)} (set the source's 'split')")
    return d[name]
  if split:
    raise DataError(f"data source {path!r} is a single Dataset; it has no split {split!r}")
  return d


@functools.lru_cache(maxsize=8)
def _load_hub(path: str, split: str, subset: str):
  ds = _datasets()
  name = hub_id(path)
  try:
    d = ds.load_dataset(name, subset or None, split=split or "train", streaming=True)
  except Exception as e:  # noqa: BLE001 - offline, unknown id, gated, unknown split, ...
    raise DataError(
        f"data source {path!r}: could not load the Hugging Face hub dataset {name!r} (a path that is no local "
        f"file or directory and looks like OWNER/NAME is taken for one) "
        f"(subset {subset or None!r}, split {split or 'train'!r}): {type(e).__name__}: {e}. Hub datasets are streamed "
        "and need network access; offline, save the dataset with save_to_disk and give that directory, or export "
        "it to .jsonl/.parquet") from e
  if not isinstance(d, ds.IterableDataset):
    raise DataError(f"data source {path!r}: load_dataset returned a {type(d).__name__}, expected an "
                    "IterableDataset")
  return d


def rows(path: str, kind: str, split: str = "", subset: str = "") -> Iterator[tuple[int, Any]]:
  """(index, row dict) of every row of the dataset."""
  d = load(path, kind, split, subset)
  i = 0
  for table in d.with_format("arrow").iter(batch_size=_BATCH):
    for rec in table.to_pylist():
      yield i, rec
      i += 1


def fingerprint(path: str, kind: str, split: str = "", subset: str = "") -> str:
  """What identifies the rows: a save_to_disk dataset's own content fingerprint; a hub dataset's revision
  (the commit of its repo)."""
  if kind == "hf_hub":
    return _hub_revision(hub_id(path))
  d = load(path, kind, split, subset)
  return str(getattr(d, "_fingerprint", "")) or f"{len(d)}"


@functools.lru_cache(maxsize=8)
def _hub_revision(name: str) -> str:
  import huggingface_hub
  try:
    return str(huggingface_hub.HfApi().dataset_info(name).sha)
  except Exception as e:  # noqa: BLE001 - offline, unknown id, gated, ...
    raise ValueError(f"data source {name!r}: could not read the revision of the Hugging Face hub dataset (it keys "
                     f"the data.cache_dir entry; streaming needs network access too): {type(e).__name__}: {e}") from e
