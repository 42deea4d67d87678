"""Conversations as the chat template gets them: tools, tool calls, reasoning, system messages.

A record becomes a `Conversation`: OpenAI-style messages plus the optional
`tools` list (JSON-schema functions) the template renders in its preamble.
Assistant messages may carry `tool_calls` (content then may be empty) and
reasoning, either inline at the start of the content or in a field:

  {"role": "assistant", "content": "<think>\\nadd them\\n</think>\\n\\nIt is 4."}
  {"role": "assistant", "reasoning_content": "add them", "content": "It is 4."}

`for_template` applies `data.reasoning` (train | drop) and `data.system`
(keep | merge_into_first_user) and hands the reasoning to the template in the
form it reads: the field for templates that render it, inline otherwise.
`not_rendered` lists the system/user/tool messages a rendering lost.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_FIELD = "reasoning_content"
REASONING_MODES = ("train", "drop")
SYSTEM_MODES = ("keep", "merge_into_first_user")
UNTRAINED_ROLES = ("system", "user", "tool")


@dataclasses.dataclass
class Conversation:
  """Messages, and the tools (JSON-schema function definitions) offered to the model, if any."""
  messages: list
  tools: list | None = None


def as_conversation(conv: Any) -> Conversation:
  return conv if isinstance(conv, Conversation) else Conversation(list(conv))


def tool_calls(calls: Any) -> list[dict]:
  """Tool calls in the OpenAI form `{"type": "function", "function": {"name", "arguments"}, "id"?}`,
  from that form or a bare `{"name", "arguments"}` (one or a list); JSON-string arguments are
  decoded to the object templates expect. ValueError names what is wrong."""
  calls = [calls] if isinstance(calls, dict) else calls
  if not isinstance(calls, list):
    raise ValueError(f"tool calls are a {type(calls).__name__}, not a list")
  out = []
  for c in calls:
    fn = c.get("function", c) if isinstance(c, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
      raise ValueError(f"a tool call without a function name: {str(c)[:80]}")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
      try:
        decoded = json.loads(args)
      except json.JSONDecodeError:
        decoded = None
      args = decoded if isinstance(decoded, dict) else args
    call = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if c.get("id") is not None:
      call["id"] = c["id"]
    out.append(call)
  return out


def split_reasoning(message: dict) -> tuple[str, str]:
  """(reasoning, answer) of an assistant message; reasoning is "" when there is none.

  The field wins over inline tags. Inline, the reasoning is what precedes the
  closing tag (an opening tag at the start is optional, as in traces whose
  opening tag was part of the prompt) and the answer what follows it.
  """
  content = message.get("content") or ""
  field = message.get(REASONING_FIELD)
  if isinstance(field, str) and field.strip():
    return field.strip(), content.strip()
  if THINK_CLOSE not in content:
    return "", content
  head, _, answer = content.partition(THINK_CLOSE)
  head = head.strip()
  if head.startswith(THINK_OPEN):
    head = head[len(THINK_OPEN):].strip()
  return head, answer.strip()


def has_reasoning(message: dict) -> bool:
  return message.get("role") == "assistant" and bool(split_reasoning(message)[0])


def inline(reasoning: str, answer: str) -> str:
  """The reply as the model writes it: reasoning in think tags, then the answer."""
  return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"


def full_reply(message: dict) -> str:
  """An assistant message's text with its reasoning, as the model is to generate it."""
  content = message.get("content") or ""
  if THINK_CLOSE in content and not message.get(REASONING_FIELD):
    return content
  reasoning, answer = split_reasoning(message)
  return inline(reasoning, answer) if reasoning else content


def is_special(message: dict) -> bool:
  """An assistant message with tool calls or reasoning: the template writes more than its content."""
  return message.get("role") == "assistant" and (bool(message.get("tool_calls")) or has_reasoning(message))


def for_template(conv: Conversation, *, reasoning: str = "train", system: str = "keep",
                 renders_reasoning_field: bool = True) -> list[dict]:
  """The messages to render: reasoning kept (as the field when the template renders it, else
  inline) or dropped, leading system messages kept or merged into the first user message."""
  if reasoning not in REASONING_MODES:
    raise ValueError(f"reasoning={reasoning!r} not in {REASONING_MODES}")
  if system not in SYSTEM_MODES:
    raise ValueError(f"system={system!r} not in {SYSTEM_MODES}")
  out = []
  for m in conv.messages:
    m = dict(m)
    if "tool_calls" in m and not m["tool_calls"]:
      del m["tool_calls"]  # Llama 3.1's template takes any message with the key for a tool call
    if m.get("role") == "assistant":
      if m.get("tool_calls"):
        m["tool_calls"] = tool_calls(m["tool_calls"])
        if not (m.get("content") or "").strip():
          m["content"] = None  # the OpenAI form: templates test `content is none` for pure tool calls
      thought, answer = split_reasoning(m)
      if thought and reasoning == "drop":
        m.pop(REASONING_FIELD, None)
        m["content"] = answer if answer or not m.get("tool_calls") else None
      elif thought and m.get(REASONING_FIELD) and not renders_reasoning_field:
        m.pop(REASONING_FIELD)
        m["content"] = inline(thought, answer)
    out.append(m)
  if system == "merge_into_first_user":
    out = _merge_system(out)
  return out


def _merge_system(msgs: list[dict]) -> list[dict]:
  lead = 0
  while lead < len(msgs) and msgs[lead].get("role") == "system":
    lead += 1
  first_user = next((i for i in range(lead, len(msgs)) if msgs[i].get("role") == "user"), None)
  if lead == 0 or first_user is None:
    return msgs
  prefix = "\n\n".join(m["content"] for m in msgs[:lead])
  user = dict(msgs[first_user], content=f"{prefix}\n\n{msgs[first_user]['content']}")
  return msgs[lead:first_user] + [user] + msgs[first_user + 1:]


def not_rendered(messages: Sequence[dict], text: str) -> list[str]:
  """Roles of the system/user/tool messages whose content is nowhere in `text` (verbatim, trimmed,
  or JSON-escaped as some templates write tool results)."""
  lost = []
  for m in messages:
    content = m.get("content")
    if m.get("role") not in UNTRAINED_ROLES or not isinstance(content, str) or not content.strip():
      continue
    c = content.strip()
    if c not in text and json.dumps(c, ensure_ascii=False)[1:-1] not in text:
      lost.append(m["role"])
  return lost
