"""Raw instruction records -> validated chat messages.

Readers yield `(file, n, record)` where `n` is the 1-based line of a `.jsonl` /
`.jsonl.gz` file or the 0-based index of a `.json` list / `.parquet` row. A line
that is not JSON is yielded as a `MalformedRecord` in place of the record, so a
caller's one `try: to_messages(...)` counts it like any other bad record.

`to_messages(record, fmt)` converts one record of a known format to a list of
`{"role", "content", ...}` dicts, or raises `MalformedRecord(reason)`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Any, Iterator

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "chatgpt": "assistant", "model": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool",
}
EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class MalformedRecord(Exception):
  """A record that cannot become a conversation; `reason` is a short key."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def where(file: str, n: int) -> str:
  """`file:line` for line-based files, `file[index]` for the others."""
  return f"{file}:{n}" if file.endswith((".jsonl", ".jsonl.gz")) else f"{file}[{n}]"


def expand(path: str) -> list[str]:
  """A file, a directory (its supported files) or a glob, as a sorted file list."""
  if os.path.isdir(path):
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(EXTENSIONS)]
  else:
    files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
  if not files:
    raise FileNotFoundError(f"data source {path!r} matches no {'/'.join(EXTENSIONS)} file")
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"data file {f!r} does not exist")
    if not f.endswith(EXTENSIONS):
      raise ValueError(f"data file {f!r}: unsupported extension, expected one of {EXTENSIONS}")
  return files


def read_records(file: str) -> Iterator[tuple[str, int, Any]]:
  """Yields (file, line_or_index, record) for one data file."""
  if file.endswith(".parquet"):
    yield from _read_parquet(file)
  elif file.endswith(".json"):
    with open(file, encoding="utf-8") as f:
      data = json.load(f)
    if not isinstance(data, list):
      raise ValueError(f"{file}: a .json source must hold a list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
      yield file, i, rec
  else:
    opener = gzip.open if file.endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8") as f:
      for n, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          yield file, n, json.loads(line)
        except json.JSONDecodeError as e:
          yield file, n, MalformedRecord("bad_json", str(e))


def _read_parquet(file: str):
  import pyarrow.parquet as pq
  i = 0
  for batch in pq.ParquetFile(file).iter_batches(batch_size=1024):
    for rec in batch.to_pylist():
      yield file, i, rec
      i += 1


def detect_format(record: Any) -> str | None:
  """The format a record's keys suggest, or None."""
  if not isinstance(record, dict):
    return None
  if "messages" in record:
    return "messages"
  if "conversations" in record:
    return "sharegpt"
  if "instruction" in record and "output" in record:
    return "alpaca"
  if "prompt" in record and "completion" in record:
    return "prompt_completion"
  return None


def to_messages(record: Any, fmt: str) -> list[dict]:
  """One record of format `fmt` as validated chat messages."""
  if isinstance(record, MalformedRecord):
    raise record
  if not isinstance(record, dict):
    raise MalformedRecord("not_an_object", f"record is a {type(record).__name__}")
  if fmt == "auto":
    fmt = detect_format(record) or ""
    if not fmt:
      raise MalformedRecord("unknown_schema", f"keys {sorted(record)[:8]} match no format")
  key = {"messages": "messages", "sharegpt": "conversations"}.get(fmt)
  if key and key not in record:
    raise MalformedRecord("bad_schema", f"no {key!r} key in a {fmt} record")
  if fmt == "messages":
    msgs = _from_messages(record)
  elif fmt == "sharegpt":
    msgs = _from_sharegpt(record)
  elif fmt == "alpaca":
    msgs = _from_alpaca(record)
  elif fmt == "prompt_completion":
    msgs = _from_prompt_completion(record)
  else:
    raise ValueError(f"unknown data format {fmt!r}; known: {FORMATS + ('auto',)}")
  return validate(msgs)


def validate(msgs: list[dict]) -> list[dict]:
  """Checks roles and contents; at least one non-empty assistant reply."""
  if not msgs:
    raise MalformedRecord("empty_conversation")
  for i, m in enumerate(msgs):
    role = m["role"]
    if role not in ROLES:
      raise MalformedRecord("unknown_role", f"message {i} has role {role!r}")
    content = m.get("content")
    if content is None and role == "assistant" and m.get("tool_calls"):
      continue
    if not isinstance(content, str):
      raise MalformedRecord("bad_content", f"message {i} content is a {type(content).__name__}")
    if not content.strip():
      raise MalformedRecord("empty_content", f"message {i} ({role}) is empty")
  if not any(m["role"] == "assistant" and m.get("content") for m in msgs):
    raise MalformedRecord("no_assistant", "no assistant reply to train on")
  return msgs


def _text(content: Any, i: int) -> Any:
  """OpenAI content parts [{"type": "text", "text": ...}] joined to a string."""
  if isinstance(content, list):
    if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
      raise MalformedRecord("bad_content", f"message {i} has non-text content parts")
    return "".join(str(p.get("text", "")) for p in content)
  return content


def _system(record: dict) -> list[dict]:
  s = record.get("system")
  if s is None or s == "":
    return []
  if not isinstance(s, str):
    raise MalformedRecord("bad_content", "'system' is not a string")
  return [{"role": "system", "content": s}]


def _from_messages(record: dict) -> list[dict]:
  raw = record["messages"]
  if not isinstance(raw, list):
    raise MalformedRecord("bad_schema", "'messages' is not a list")
  out = _system(record)
  for i, m in enumerate(raw):
    if not isinstance(m, dict) or "role" not in m:
      raise MalformedRecord("bad_schema", f"message {i} has no 'role'")
    if "content" not in m and not m.get("tool_calls"):
      raise MalformedRecord("missing_content", f"message {i} has no 'content'")
    msg = {k: v for k, v in m.items() if v is not None}
    msg["content"] = _text(m.get("content"), i)
    out.append(msg)
  return out


def _from_sharegpt(record: dict) -> list[dict]:
  raw = record["conversations"]
  if not isinstance(raw, list):
    raise MalformedRecord("bad_schema", "'conversations' is not a list")
  out = _system(record)
  for i, m in enumerate(raw):
    if not isinstance(m, dict) or "from" not in m:
      raise MalformedRecord("bad_schema", f"turn {i} has no 'from'")
    if "value" not in m:
      raise MalformedRecord("missing_content", f"turn {i} has no 'value'")
    role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
    if role is None:
      raise MalformedRecord("unknown_role", f"turn {i} is from {m['from']!r}")
    out.append({"role": role, "content": m["value"]})
  return out


def _from_alpaca(record: dict) -> list[dict]:
  inst, inp, output = record.get("instruction"), record.get("input"), record.get("output")
  for key, v in (("instruction", inst), ("output", output)):
    if not isinstance(v, str):
      raise MalformedRecord("missing_content" if v is None else "bad_content", f"'{key}' is not a string")
  if inp is not None and not isinstance(inp, str):
    raise MalformedRecord("bad_content", "'input' is not a string")
  prompt = f"{inst}\n\n{inp}" if inp and inp.strip() else inst
  return _system(record) + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _from_prompt_completion(record: dict) -> list[dict]:
  prompt, completion = record.get("prompt"), record.get("completion")
  if isinstance(prompt, list) and isinstance(completion, list):  # TRL conversational form
    return _from_messages({"messages": prompt + completion})
  for key, v in (("prompt", prompt), ("completion", completion)):
    if not isinstance(v, str):
      raise MalformedRecord("missing_content" if v is None else "bad_content", f"'{key}' is not a string")
  return _system(record) + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
