"""Rendering a conversation with the tokenizer's chat template, and what a template can do.

`render` is the one call to `apply_chat_template` of the mask code (errors become
`DropExample("template_error")`); `end_of_turn_markers` lists what may close a
reply; `uses_tools` / `renders_reasoning_field` say whether a template reads tools
and renders `reasoning_content` (probed once per template).
"""

from __future__ import annotations

import re
from typing import Sequence

from jaxtune.data import messages as msgs_lib
from jaxtune.data import templates

_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE = "\u27e6JXT:probe\u27e7"
_TOOL_NAMES_RE = re.compile(r"\btool_calls\b|\btools\b")
_JINJA_COMMENT_RE = re.compile(r"\{#.*?#\}", re.S)


class DropExample(Exception):
  """An example that yields no usable training data; `reason` is a short key."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


class MaskMismatch(DropExample):
  """The rendered chat and the replies do not line up; the mask would be wrong."""

  def __init__(self, detail: str):
    super().__init__("mask_mismatch", detail)


def has_generation_tags(template: str | None) -> bool:
  return bool(template) and bool(_GENERATION_RE.search(template))


def template_of(tokenizer) -> str:
  """The template apply_chat_template uses (the default one of a named set)."""
  t = tokenizer.chat_template
  return t if isinstance(t, str) or t is None else tokenizer.get_chat_template()


def end_of_turn_markers(tokenizer) -> tuple[str, ...]:
  """Strings that may close an assistant turn, longest first."""
  marks = set(templates.END_OF_TURN)
  if getattr(tokenizer, "eos_token", None):
    marks.add(tokenizer.eos_token)
  return tuple(sorted(marks, key=len, reverse=True))


def render(messages: Sequence[dict], tokenizer, tools: list | None = None,
           add_generation_prompt: bool = False) -> str:
  try:
    return tokenizer.apply_chat_template(list(messages), tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
  except Exception as e:  # jinja raise_exception(), missing keys, ...
    raise DropExample("template_error", f"{type(e).__name__}: {e}") from e


def uses_tools(tokenizer) -> bool:
  """Whether the template's code (not its comments) reads `tools` or `tool_calls`."""
  return bool(_TOOL_NAMES_RE.search(_JINJA_COMMENT_RE.sub("", template_of(tokenizer) or "")))


_FIELD_SUPPORT: dict[str, bool] = {}


def renders_reasoning_field(tokenizer) -> bool:
  """Whether the chat template renders an assistant message's `reasoning_content` (cached per template)."""
  t = template_of(tokenizer) or ""
  if t not in _FIELD_SUPPORT:
    probe = [{"role": "user", "content": "u"},
             {"role": "assistant", "content": "a", msgs_lib.REASONING_FIELD: _PROBE}]
    try:
      _FIELD_SUPPORT[t] = _PROBE in render(probe, tokenizer)
    except DropExample:
      _FIELD_SUPPORT[t] = False
  return _FIELD_SUPPORT[t]
