"""Raw instruction records -> validated chat messages.

Sources (`expand` lists the readable units of a configured path):
  .jsonl / .jsonl.gz / .json (a list) / .parquet files, a directory of them, or a glob;
  .array_record files (`pretokenized.py`: pre-tokenized examples, or JSON records);
  a Hugging Face `save_to_disk` directory, or a hub dataset id `hf:OWNER/NAME` / `OWNER/NAME`
  (`hf_datasets.py`, needs the optional `datasets` package);
  any of the file kinds at a remote path (gs://..., s3://...) through `etils.epath`
  (gs:// needs gcsfs, or tensorflow).

Readers yield `(file, n, record)` where `n` is the 1-based line of a `.jsonl` /
`.jsonl.gz` file or the 0-based index of a `.json` list / `.parquet` row / ArrayRecord
record / dataset row. A line (record) that cannot be decoded is yielded as a
`MalformedRecord` in place of the record, so a caller's one `try: to_messages(...)`
counts it like any other bad record.

`to_messages(record, fmt)` converts one record of a known format to a list of
`{"role", "content", ...}` dicts, or raises `MalformedRecord(reason)`; `to_conversation`
adds the record's `tools`. Records with `input_ids` (format "pretokenized") skip the chat
template: `pretokenized.to_arrays`.

Tool calling: a top-level `tools` list (JSON-schema functions, or a JSON string of one),
assistant messages with OpenAI `tool_calls` (`content` may then be empty or null) and
`tool` messages with the results; in sharegpt, `function_call` turns (a JSON object
`{"name", "arguments"}` or a list of them) and `observation` turns. Reasoning comes inline
(`<think>...</think>` before the answer) or in `reasoning_content` (also read from
`reasoning` / `thinking`).
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from typing import Any, Iterator

from jaxtune import io
from jaxtune.data import hf_datasets, pretokenized
from jaxtune.data.messages import REASONING_FIELD, Conversation, tool_calls
from jaxtune.errors import DataError, MissingPathError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
PRETOKENIZED = "pretokenized"
PREFERENCE = "preference"  # jaxtune.data.preference; trained by train.objective=dpo
ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "chatgpt": "assistant", "model": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "function_response": "tool",
}
_SHAREGPT_CALLS = ("function_call", "tool_call", "tool_calls")  # assistant turns whose value is the call(s)
_REASONING_ALIASES = (REASONING_FIELD, "reasoning", "thinking")
EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet", pretokenized.SUFFIX)
HF_KINDS = ("hf_disk", "hf_hub")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class MalformedRecord(Exception):
  """A record that cannot become a conversation; `reason` is a short key."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


def where(file: str, n: int) -> str:
  """`file:line` for line-based files, `file[index]` for the others."""
  return f"{file}:{n}" if file.endswith((".jsonl", ".jsonl.gz")) else f"{file}[{n}]"




def is_hf_dir(path: str) -> bool:
  """A `datasets` save_to_disk directory: a Dataset or a DatasetDict."""
  return (all(io.exists(io.join(path, m)) for m in hf_datasets.DISK_MARKERS)
          or io.exists(io.join(path, hf_datasets.DICT_MARKER)))


def _supported(name: str) -> bool:
  return name.endswith(EXTENSIONS) or pretokenized.is_array_record(name)


def kind(file: str) -> str:
  """jsonl | json | parquet | array_record | hf_disk | hf_hub, for one unit of `expand`."""
  if file.startswith(hf_datasets.HUB_PREFIX):
    return "hf_hub"
  if pretokenized.is_array_record(file):
    return "array_record"
  for ext, k in ((".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".json", "json"), (".parquet", "parquet")):
    if file.endswith(ext):
      return k
  if io.is_dir(file):
    return "hf_disk"
  raise DataError(f"data file {file!r}: unsupported extension, expected one of {EXTENSIONS}")


def _looks_like_hub_id(path: str) -> bool:
  return (bool(_HUB_ID_RE.match(path)) and not _supported(path) and not path.startswith((".", "~"))
          and not io.is_remote(path) and not io.has_magic(path))


def expand(path: str) -> list[str]:
  """A source path as a sorted list of units to read: files (a file, a directory's supported
  files, or a glob), a `datasets` save_to_disk directory, or a hub id `hf:OWNER/NAME`.
  A path that does not exist locally and looks like `OWNER/NAME` is taken as a hub id."""
  path = str(path)
  if path.startswith(hf_datasets.HUB_PREFIX):  # also canonical ids without an owner, "hf:squad"
    return [path]
  if io.is_dir(path):
    if is_hf_dir(path):
      return [path]
    files = [f for f in io.listdir(path) if _supported(os.path.basename(f)) and io.is_file(f)]
  elif io.has_magic(path):
    files = io.glob(path)
  elif not io.exists(path) and _looks_like_hub_id(path):
    return [hf_datasets.HUB_PREFIX + path]
  else:
    files = [path]
  if not files:
    raise MissingPathError(f"data source {path!r} matches no {'/'.join(EXTENSIONS)} file "
                           "(nor a Hugging Face save_to_disk directory)")
  for f in files:
    if io.is_dir(f) and is_hf_dir(f):
      continue
    if not io.is_file(f):
      raise MissingPathError(f"data file {f!r} does not exist")
    if not _supported(os.path.basename(f)):
      raise DataError(f"data file {f!r}: unsupported extension, expected one of {EXTENSIONS}")
  return files


def read_records(file: str, *, split: str = "", subset: str = "") -> Iterator[tuple[str, int, Any]]:
  """Yields (file, line_or_index, record) for one unit of `expand`; `split`/`subset` pick
  the part of a Hugging Face dataset (an error for files)."""
  k = kind(file)
  if k in HF_KINDS:
    label = f"{file}:{split}" if split else file
    for i, rec in hf_datasets.rows(file, k, split, subset):
      yield label, i, rec
    return
  if split or subset:
    raise DataError(f"data file {file!r}: 'split'/'subset' apply to Hugging Face datasets only")
  if k == "array_record":
    yield from _read_array_record(file)
  elif k == "parquet":
    yield from _read_parquet(file)
  elif k == "json":
    for i, rec in enumerate(_read_json_list(file)):
      yield file, i, rec
  else:
    yield from _read_jsonl(file)


MAX_JSON_DEPTH_ERROR = "nested too deeply for the JSON parser"


def decode_line(line: bytes) -> Any:
  """One JSON-lines record, or a MalformedRecord saying why it is not one (invalid UTF-8, bad JSON, a value
  nested too deeply or an integer too long for Python's parser)."""
  try:
    text = line.decode("utf-8")
  except UnicodeDecodeError as e:
    return MalformedRecord("bad_utf8", f"invalid UTF-8 at byte {e.start} of the line ({e.reason})")
  try:
    rec = json.loads(text)
  except RecursionError:
    return MalformedRecord("bad_json", MAX_JSON_DEPTH_ERROR)
  except ValueError as e:  # JSONDecodeError, and the int-digits limit of int()
    return MalformedRecord("bad_json", str(e))
  return _checked_text(rec, text)


def _checked_text(rec: Any, text: str) -> Any:
  """`rec`, or a MalformedRecord when a lone surrogate escape (`\\ud800`) made one of its strings something
  that is not text (a tokenizer would fail the whole batch on it). Only JSON escapes make these, so only
  text holding a `\\ud` escape is checked."""
  if "\\ud" not in text and "\\uD" not in text:
    return rec
  try:
    json.dumps(rec, ensure_ascii=False).encode("utf-8")
  except UnicodeEncodeError as e:
    return MalformedRecord("bad_unicode", f"a lone surrogate {e.object[e.start:e.end]!r} (a \\ud800-\\udfff escape "
                           "without its pair) is not text")
  return rec


def _read_jsonl(file: str) -> Iterator[tuple[str, int, Any]]:
  """Records of a .jsonl / .jsonl.gz file, read as bytes so that one line of invalid UTF-8 is one malformed
  record; a UTF-8 byte-order mark before the first line is skipped. A gzip stream that is not gzip, is
  damaged or ends early (after the records before it were read) is a DataError naming the file and line."""
  n = 0
  with io.open(file, "rb") as raw:
    stream = gzip.open(raw, "rb") if file.endswith(".gz") else raw
    try:
      for n, line in enumerate(stream, start=1):
        if n == 1 and line.startswith(codecs.BOM_UTF8):
          line = line[len(codecs.BOM_UTF8):]
        if line.strip():
          yield file, n, decode_line(line)
    except EOFError as e:
      raise DataError(f"{file}: the gzip stream ends early, after line {n} ({e}); the file is truncated: "
                      "write or download it again") from None
    except gzip.BadGzipFile as e:
      raise DataError(f"{file}: not a gzip file ({e}); a .jsonl.gz source must be gzip-compressed") from None
    except (zlib.error, OSError) as e:
      raise DataError(f"{file}: cannot read past line {n}: {type(e).__name__}: {e}") from None


def _read_json_list(file: str) -> list:
  """The records of a .json source: one JSON array; anything else is a DataError naming the file (and line)."""
  try:
    text = io.read_bytes(file).decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise DataError(f"{file}: not UTF-8 text (invalid byte at offset {e.start}: {e.reason})") from None
  try:
    data = json.loads(text)
  except RecursionError:
    raise DataError(f"{file}: a value is {MAX_JSON_DEPTH_ERROR}") from None
  except json.JSONDecodeError as e:
    hint = " (one JSON record per line is a .jsonl file: rename it)" if e.msg == "Extra data" else ""
    raise DataError(f"{file}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}){hint}") from None
  except ValueError as e:
    raise DataError(f"{file}: not valid JSON ({e})") from None
  if not isinstance(data, list):
    raise DataError(f"{file}: a .json source must hold a list of records, got {type(data).__name__}")
  return [_checked_text(rec, text) for rec in data]


def _read_parquet(file: str):
  import pyarrow as pa
  import pyarrow.parquet as pq
  i = 0
  with io.open(file, "rb") as f:
    try:
      batches = pq.ParquetFile(f).iter_batches(batch_size=1024)
      for batch in batches:
        for rec in batch.to_pylist():
          yield file, i, rec
          i += 1
    except (pa.ArrowException, OSError, ValueError) as e:
      first = (str(e).strip().splitlines() or [""])[0]
      at = f" at row {i}" if i else ""
      raise DataError(f"{file}: not a readable parquet file{at} ({first})") from None


def _read_array_record(file: str):
  """Decoded records of an ArrayRecord file (a remote one is read from a local copy: the ArrayRecord reader
  reads local files only)."""
  i = 0
  try:
    for i, raw in pretokenized.read(io.local_copy(file)):
      try:
        rec = pretokenized.decode(raw)
      except pretokenized.RecordError as e:
        rec = MalformedRecord("bad_record", str(e))
      yield file, i, rec
  except (OSError, ValueError, RuntimeError) as e:
    first = (str(e).strip().splitlines() or [""])[0]
    raise DataError(f"{file}: not a readable ArrayRecord file (record {i}: {type(e).__name__}: {first})") from None


def detect_format(record: Any) -> str | None:
  """The format a record's keys suggest, or None."""
  if not isinstance(record, dict):
    return None
  if "input_ids" in record:
    return PRETOKENIZED
  if "chosen" in record and "rejected" in record:
    return PREFERENCE
  if "messages" in record:
    return "messages"
  if "conversations" in record:
    return "sharegpt"
  if "instruction" in record and "output" in record:
    return "alpaca"
  if "prompt" in record and "completion" in record:
    return "prompt_completion"
  return None


def convert(record: Any, fmt: str) -> Conversation | tuple[Any, Any]:
  """`to_conversation`, or (input_ids, loss_mask) int32 arrays for a pre-tokenized record
  (format "pretokenized", or "auto" and an `input_ids` key)."""
  if isinstance(record, MalformedRecord):
    raise record
  if fmt == "auto" and isinstance(record, dict) and "input_ids" in record:
    fmt = PRETOKENIZED
  if fmt != PRETOKENIZED:
    return to_conversation(record, fmt)
  if not isinstance(record, dict):
    raise MalformedRecord("not_an_object", f"record is a {type(record).__name__}")
  try:
    arrays = pretokenized.to_arrays(record)
  except pretokenized.RecordError as e:
    raise MalformedRecord("bad_tokens", str(e)) from e
  return arrays["input_ids"], arrays["loss_mask"]


def to_messages(record: Any, fmt: str, *, require_reply: bool = True) -> list[dict]:
  """One record of format `fmt` as validated chat messages (with an assistant reply
  unless `require_reply` is False: prompts to generate from)."""
  return to_conversation(record, fmt, require_reply=require_reply).messages


def to_conversation(record: Any, fmt: str, *, require_reply: bool = True) -> Conversation:
  """`to_messages` with the record's top-level `tools` list."""
  if isinstance(record, MalformedRecord):
    raise record
  if not isinstance(record, dict):
    raise MalformedRecord("not_an_object", f"record is a {type(record).__name__}")
  if fmt == "auto":
    fmt = detect_format(record) or ""
    if not fmt:
      raise MalformedRecord("unknown_schema", f"keys {sorted(record)[:8]} match no format")
  if fmt == PREFERENCE:
    raise MalformedRecord("preference_record", "a preference pair (chosen/rejected): train it with "
                          "train.objective=dpo")
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
  return Conversation(validate(msgs, require_reply=require_reply), _tools(record.get("tools")))


def validate(msgs: list[dict], *, require_reply: bool = True) -> list[dict]:
  """Checks roles and contents; at least one non-empty assistant reply if `require_reply`."""
  if not msgs:
    raise MalformedRecord("empty_conversation")
  for i, m in enumerate(msgs):
    role = m["role"]
    if role not in ROLES:
      raise MalformedRecord("unknown_role", f"message {i} has role {role!r}")
    content = m.get("content")
    calls = role == "assistant" and bool(m.get("tool_calls"))
    if content is None and calls:
      continue
    if not isinstance(content, str):
      raise MalformedRecord("bad_content", f"message {i} content is a {type(content).__name__}")
    if not content.strip() and not calls:
      raise MalformedRecord("empty_content", f"message {i} ({role}) is empty")
    if not isinstance(m.get(REASONING_FIELD, ""), str):
      raise MalformedRecord("bad_content", f"message {i} {REASONING_FIELD} is not a string")
  if require_reply and not any(m["role"] == "assistant" and (m.get("content") or m.get("tool_calls"))
                               for m in msgs):
    raise MalformedRecord("no_assistant", "no assistant reply to train on")
  return msgs


def _json(value: Any, what: str) -> Any:
  """A value that may be given as a JSON string, decoded."""
  if not isinstance(value, str):
    return value
  try:
    return json.loads(value)
  except json.JSONDecodeError as e:
    raise MalformedRecord("bad_tool_call" if "call" in what else "bad_tools", f"{what} is not valid JSON: {e}") from e


def _tools(raw: Any) -> list | None:
  """The top-level `tools` list (JSON-schema function definitions), or None."""
  if raw is None or raw == "" or raw == []:
    return None
  tools = _json(raw, "'tools'")
  if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
    raise MalformedRecord("bad_tools", "'tools' is not a list of objects")
  return tools


def _tool_calls(raw: Any, i: int) -> list[dict]:
  calls = _json(raw, f"turn {i} tool call")
  try:
    return tool_calls(calls)
  except ValueError as e:
    raise MalformedRecord("bad_tool_call", f"turn {i}: {e}") from e


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
    msg = {k: v for k, v in m.items() if v is not None and k not in _REASONING_ALIASES}
    msg["content"] = _text(m.get("content"), i)
    if m.get("role") == "tool" and isinstance(msg["content"], (dict, list)):
      msg["content"] = json.dumps(msg["content"], ensure_ascii=False)
    if not msg.get("tool_calls"):
      msg.pop("tool_calls", None)
    thought = next((m[k] for k in _REASONING_ALIASES if m.get(k) not in (None, "")), None)
    if thought is not None:
      msg[REASONING_FIELD] = thought
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
    who = str(m["from"]).lower()
    if who in _SHAREGPT_CALLS:
      calls = _tool_calls(m["value"], i)
      prev = out[-1] if out else None
      if prev is not None and prev["role"] == "assistant" and not prev.get("tool_calls"):
        prev["tool_calls"] = calls  # text then calls: one assistant message holding both
      else:
        out.append({"role": "assistant", "content": None, "tool_calls": calls})
      continue
    role = _SHAREGPT_ROLES.get(who)
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
