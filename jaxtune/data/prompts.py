"""Prompts to generate from, read from any data-source form, with an optional reference answer.

Used by eval prompts during training (`eval.prompts`), `jaxtune generate --prompts`
and `jaxtune synth`. A record is a conversation in any format `jaxtune train`
reads (a JSONL of `{"messages": [...], "reference": "..."}` is the usual one;
`{"prompt": "..."}` and alpaca's `{"instruction", "input"}` without `output` work
too): the prompt is the conversation up to its last turn when that turn is the
assistant's, and that turn is the reference unless `reference` is given.
Malformed records are skipped and named by file:line, or fail in strict mode.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator

from jaxtune.data import records
from jaxtune.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prompt:
  messages: list[dict]  # the conversation to reply to (ends with a user or tool turn)
  reference: str | None
  where: str  # file:line
  record: Any = None  # the record it came from (synth keeps its id)


def to_prompt(rec: Any) -> tuple[list[dict], str | None]:
  """(messages to reply to, reference or None) of one record; MalformedRecord if it has no prompt."""
  if isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and "completion" not in rec:
    rec = {**rec, "messages": [{"role": "user", "content": rec["prompt"]}]}
  if isinstance(rec, dict) and "instruction" in rec and "output" not in rec and "messages" not in rec:
    # alpaca without an answer: the alpaca conversion with a placeholder reply, which is then dropped
    msgs = records.to_messages({**rec, "output": "-"}, "alpaca", require_reply=False)[:-1]
  else:
    msgs = records.to_messages(rec, "auto", require_reply=False)
  reference = rec.get("reference") if isinstance(rec, dict) else None
  if reference is not None and not isinstance(reference, str):
    raise records.MalformedRecord("bad_reference", f"'reference' is a {type(reference).__name__}")
  if msgs[-1]["role"] == "assistant":
    reference = msgs[-1]["content"] if reference is None else reference
    msgs = msgs[:-1]
  if not msgs or msgs[-1]["role"] not in ("user", "tool"):
    raise records.MalformedRecord("no_prompt", "the conversation has no user turn to reply to")
  return msgs, reference


def iter_prompts(path: str, *, strict: bool = False, bad: list[str] | None = None) -> Iterator[Prompt]:
  """The prompts of `path` (a file, dir or glob; local or remote), streamed in file order. Malformed
  records are appended to `bad` as "file:line: reason" (or raise DataError when `strict`)."""
  for file in records.expand(path):
    for f, n, rec in records.read_records(file):
      try:
        msgs, ref = to_prompt(rec)
      except records.MalformedRecord as e:
        if strict:
          raise DataError(f"{records.where(f, n)}: malformed prompt record ({e}); strict mode is set") from e
        if bad is not None:
          bad.append(f"{records.where(f, n)}: {e}")
        continue
      yield Prompt(messages=msgs, reference=ref, where=records.where(f, n), record=rec)


def read_prompts(path: str, *, strict: bool = False) -> list[Prompt]:
  """Every prompt of `path`; skipped malformed records are named in one warning; no prompt at all is an
  error."""
  bad: list[str] = []
  out = list(iter_prompts(path, strict=strict, bad=bad))
  if bad:
    log.warning("%s: skipped %d malformed record(s), e.g. %s", path, len(bad), "; ".join(bad[:3]))
  if not out:
    raise DataError(f"prompts {path!r}: no usable prompt" + (f" ({bad[0]})" if bad else ""))
  return out
