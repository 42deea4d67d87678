"""Pre-tokenized examples in ArrayRecord files (`.array_record`).

Record schema (version 1). Each ArrayRecord record is one example, a msgpack map:

  {"input_ids": <bin>, "loss_mask": <bin>}

  input_ids  token ids, little-endian int32, 4 bytes per token
  loss_mask  optional; one byte per token, 1 where the token is a training target
             (predicted from the tokens before it), else 0; absent = every token

This is the (ids, loss_mask) pair `jaxtune.data.chat.tokenize_messages` returns:
`loss_mask[t] == 1` iff `input_ids[t]` is trained. The first token of an example is
never a target (nothing precedes it in its segment), whatever the mask says. The
ids must come from the tokenizer of the model being tuned: the reader checks only
that they are in range.

Readers also accept, so that other tools can write these files easily:
  - msgpack arrays of ints in place of either <bin> field;
  - an `.npz` archive (`np.savez` bytes) holding arrays `input_ids` (and `loss_mask`);
  - a UTF-8 JSON object (a record starting with `{`): a conversation record of any
    supported format (messages, sharegpt, ...), tokenized like a line of a .jsonl file.

Files are written with `group_size:1`, the layout Grain's `ArrayRecordDataSource`
needs for fast random access. Write them with `write_pretokenized`.
"""

from __future__ import annotations

import io as _stdio
import json
import os
from typing import Any, Iterable, Iterator

import msgpack
import numpy as np

from jaxtune import io

SUFFIX = ".array_record"
WRITER_OPTIONS = "group_size:1"
_READ_CHUNK = 1024  # records per read call


class RecordError(ValueError):
  """A record that is not a pre-tokenized example (nor a JSON record)."""


def encode(input_ids: Any, loss_mask: Any = None) -> bytes:
  """One example as a schema-v1 record."""
  ids = np.asarray(input_ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"input_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
  rec = {"input_ids": ids.astype("<i4").tobytes()}
  if loss_mask is not None:
    mask = np.asarray(loss_mask)
    if mask.shape != ids.shape:
      raise ValueError(f"loss_mask has shape {mask.shape}, input_ids {ids.shape}")
    rec["loss_mask"] = (mask != 0).astype(np.uint8).tobytes()
  return msgpack.packb(rec, use_bin_type=True)


def decode(raw: bytes) -> dict:
  """A record's bytes -> {"input_ids": int32 [n], "loss_mask": int32 [n]} (pre-tokenized)
  or the dict of a JSON conversation record. Raises RecordError."""
  if raw[:1] == b"{":
    try:
      rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise RecordError(f"a record starting with '{{' is not JSON: {e}") from e
    if not isinstance(rec, dict):
      raise RecordError("a JSON record must be an object")
    return rec
  if raw[:4] == b"PK\x03\x04":
    try:
      with np.load(_stdio.BytesIO(raw), allow_pickle=False) as z:
        fields = {k: z[k] for k in ("input_ids", "loss_mask") if k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable archive is a bad record
      raise RecordError(f"unreadable .npz record: {e}") from e
  else:
    try:
      fields = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001
      raise RecordError(f"not a msgpack record: {type(e).__name__}: {e}") from e
    if not isinstance(fields, dict):
      raise RecordError(f"a record must be a msgpack map, got {type(fields).__name__}")
  return to_arrays(fields)


def to_arrays(fields: dict) -> dict:
  """{"input_ids", "loss_mask"} of any accepted form -> int32 arrays; RecordError if malformed."""
  if "input_ids" not in fields:
    raise RecordError(f"no 'input_ids' in a record with keys {sorted(map(str, fields))[:8]}")
  ids = _array(fields["input_ids"], "<i4", "input_ids")
  mask = fields.get("loss_mask")
  mask = np.ones_like(ids) if mask is None else _array(mask, np.uint8, "loss_mask")
  if mask.shape != ids.shape:
    raise RecordError(f"loss_mask has {mask.size} entries for {ids.size} input_ids")
  return {"input_ids": ids.astype(np.int32), "loss_mask": (mask != 0).astype(np.int32)}


def _array(v: Any, bin_dtype, name: str) -> np.ndarray:
  if isinstance(v, (bytes, bytearray, memoryview)):
    size = np.dtype(bin_dtype).itemsize
    if len(v) % size:
      raise RecordError(f"'{name}' has {len(v)} bytes, not a multiple of {size}")
    return np.frombuffer(bytes(v), bin_dtype)
  try:
    a = np.asarray(v)
  except Exception as e:  # noqa: BLE001 - ragged lists and the like
    raise RecordError(f"'{name}' is not an array: {e}") from e
  if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
    raise RecordError(f"'{name}' must be a 1-D list of integers, got {a.dtype} {a.shape}")
  return a.astype(np.int64)


def is_array_record(path: str) -> bool:
  """`x.array_record` and sharded `x.array_record-00000-of-00008` names."""
  name = os.path.basename(path.rstrip("/"))
  return name.endswith(SUFFIX) or f"{SUFFIX}-" in name


def read(path: str) -> Iterator[tuple[int, bytes]]:
  """(index, raw bytes) of every record of a local ArrayRecord file, in order."""
  from array_record.python.array_record_module import ArrayRecordReader
  reader = ArrayRecordReader(str(path))
  try:
    n = reader.num_records()
    for start in range(0, n, _READ_CHUNK):
      for i, raw in enumerate(reader.read(start, min(n, start + _READ_CHUNK)), start=start):
        yield i, raw
  finally:
    reader.close()


def write_pretokenized(path: str | os.PathLike, examples: Iterable[Any]) -> int:
  """Writes examples as a schema-v1 ArrayRecord file; returns how many.

  Each example is an (input_ids, loss_mask) pair, a dict with those keys
  (loss_mask optional), or a bare input_ids sequence (every token trained).
  `path` may be remote (gs://..., through jaxtune.io): the file is written
  locally first and then copied.
  """
  from array_record.python.array_record_module import ArrayRecordWriter
  n = 0
  with io.local_file_for_writing(os.fspath(path)) as local:
    writer = ArrayRecordWriter(local, WRITER_OPTIONS)
    try:
      for ex in examples:
        if isinstance(ex, dict):
          writer.write(encode(ex["input_ids"], ex.get("loss_mask")))
        elif isinstance(ex, tuple) and len(ex) == 2:
          writer.write(encode(*ex))
        else:
          writer.write(encode(ex))
        n += 1
    finally:
      writer.close()
  return n
