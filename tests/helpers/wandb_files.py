"""Reading what an offline W&B run wrote (WANDB_MODE=offline): WANDB_DIR/wandb/offline-run-*/run-ID.wandb.

The file is W&B's record log (LevelDB's log format): a 7-byte header (":W&B", magic 0xBEE1, version 0),
then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, a record being one FULL
chunk or FIRST, MIDDLE..., LAST; each record is a `wandb_internal_pb2.Record` protobuf.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> list:
  from wandb.proto import wandb_internal_pb2
  data = open(path, "rb").read()
  assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), data[:7]
  out, pos, parts = [], HEADER, []
  while pos + HEADER <= len(data):
    left = BLOCK - pos % BLOCK
    if left < HEADER:  # the block's tail is padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
    if kind == 0 and length == 0:  # zero padding at the end of a block
      pos += left
      continue
    chunk = data[pos + HEADER:pos + HEADER + length]
    pos += HEADER + length
    parts.append(chunk)
    if kind in (FULL, LAST):
      rec = wandb_internal_pb2.Record()
      rec.ParseFromString(b"".join(parts))
      out.append(rec)
      parts = []
  return out


def offline_runs(wandb_dir: str) -> list[str]:
  """The .wandb files of every offline run under WANDB_DIR, oldest first."""
  return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*", "run-*.wandb")))


def read_run(path: str) -> dict[str, Any]:
  """{"run": the run record, "config": {key: value}, "history": [{key: value} per log call]}."""
  out: dict[str, Any] = {"run": None, "config": {}, "history": []}
  for rec in records(path):
    kind = rec.WhichOneof("record_type")
    if kind == "run":
      out["run"] = rec.run
      out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    elif kind == "config":
      out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
    elif kind == "history":
      out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
  return out
