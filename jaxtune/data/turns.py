"""Where an assistant turn with tool calls or reasoning lies in a rendered chat.

Such a turn holds more than its content: the template writes the tool calls in its
own syntax and the reasoning inside think tags. `locate` finds what the template
wrote for the turn as the difference from the chat rendered with only that turn
replaced by a placeholder reply (or, for templates that refuse that, deleted), and
checks it: the tool calls are there, the reply is there, an end-of-turn marker
follows. `inference_form` rebuilds a final reply whose reasoning the template
strips (DeepSeek-R1-distill) as the model meets it at inference.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from jaxtune.data import messages as msgs_lib
from jaxtune.data.messages import THINK_OPEN
from jaxtune.data.rendering import DropExample, MaskMismatch, end_of_turn_markers, render

_TURN_PLACEHOLDER = "\u27e6JXT:turn\u27e7"
_OPENER_BEFORE_RE = re.compile(re.escape(THINK_OPEN) + r"\s*$")


@dataclasses.dataclass
class Turn:
  """Where a turn with tool calls or reasoning lies in the rendered chat: its trained span (through the
  end-of-turn marker), the region the template wrote for it (header and marker excluded), and whether
  its reasoning is rendered there."""
  span: tuple[int, int]
  region: tuple[int, int]
  reasoning_rendered: bool


def locate(messages: Sequence[dict], i: int, text: str, tokenizer, tools: list | None) -> Turn:
  """Locates assistant message i (tool calls / reasoning) in `text`, checks what the template wrote there."""
  if _TURN_PLACEHOLDER in text:
    raise MaskMismatch("a message contains the internal placeholder text")
  a, b = _region(messages, i, text, tokenizer, tools)
  m, region = messages[i], text[a:b]
  marks = end_of_turn_markers(tokenizer)
  if any(mk in region for mk in marks):
    raise MaskMismatch(f"the rendering of assistant message {i} is not local to it (it changes other turns)")
  ws = len(text) - b - len(text[b:].lstrip())
  mark = next((mk for mk in marks if text.startswith(mk, b + ws)), None)
  if mark is None:
    raise MaskMismatch(f"no end-of-turn marker ({', '.join(marks)}) follows assistant message {i}: {text[b:b + 40]!r}")
  thought, answer = msgs_lib.split_reasoning(m)
  start, rendered = a, bool(thought) and thought in region
  if rendered:
    opener = _OPENER_BEFORE_RE.search(text, max(0, a - 64), a)
    start = opener.start() if opener else a
  calls = m.get("tool_calls") or []
  missing = [c["function"]["name"] for c in calls if c["function"]["name"] not in region]
  if missing or (calls and not region.strip()):
    raise DropExample("tools_unsupported", f"the chat template does not render the tool calls {missing} of message {i}")
  if not calls and answer and answer not in region:
    raise MaskMismatch(f"assistant message {i}'s reply is not in the rendered chat as written")
  return Turn((start, b + ws + len(mark)), (a, b), rendered)


def _region(messages: Sequence[dict], i: int, text: str, tokenizer, tools: list | None) -> tuple[int, int]:
  """[a, b): what the template writes for assistant message i after its header, before its end-of-turn
  marker: where `text` differs from the chat rendered with only message i replaced by a placeholder reply."""
  alt_msgs = list(messages)
  alt_msgs[i] = {"role": "assistant", "content": _TURN_PLACEHOLDER}
  try:
    alt = render(alt_msgs, tokenizer, tools)
  except DropExample:
    return _region_by_deletion(messages, i, text, tokenizer, tools)
  a = _common_prefix(text, alt)
  b = len(text) - _common_prefix(text[::-1], alt[::-1], limit=min(len(text), len(alt)) - a)
  if _TURN_PLACEHOLDER not in alt[a:len(alt) - (len(text) - b)]:
    raise MaskMismatch(f"assistant message {i} (tool calls / reasoning) could not be located in the rendered chat")
  return a, b


def _region_by_deletion(messages: Sequence[dict], i: int, text: str, tokenizer,
                        tools: list | None) -> tuple[int, int]:
  """`_region` for templates that refuse the placeholder reply (Mistral v0.3 counts it among the turns that
  must alternate): the chat rendered without message i lacks exactly its rendering, header and end-of-turn
  included. Where that gap can slide (the text around it repeats), it is the one that ends with an
  end-of-turn marker; the generation prompt at its start is the header, not trained."""
  try:
    short = render(list(messages[:i]) + list(messages[i + 1:]), tokenizer, tools)
  except DropExample as e:
    raise MaskMismatch(f"assistant message {i} (tool calls / reasoning) could not be located: the template refuses "
                       f"the chat without it or with it replaced by a plain reply ({e.detail})") from e
  n, marks = len(text) - len(short), end_of_turn_markers(tokenizer)
  top = _common_prefix(text, short)
  for c in range(top, max(-1, top - n - 1), -1):
    gap = text[c:c + n].rstrip()
    mark = next((mk for mk in marks if gap.endswith(mk)), None)
    if n > 0 and mark and text[:c] + text[c + n:] == short:
      return c + len(_generation_prompt(messages[:i], tokenizer, tools, text[c:])), c + len(gap) - len(mark)
  raise MaskMismatch(f"assistant message {i} (tool calls / reasoning) could not be located in the rendered chat")


def _generation_prompt(messages: Sequence[dict], tokenizer, tools: list | None, at: str) -> str:
  """What add_generation_prompt appends to `messages`, if `at` starts with it; else ""."""
  try:
    base = render(messages, tokenizer, tools)
    prompt = render(messages, tokenizer, tools, add_generation_prompt=True)
  except DropExample:
    return ""
  gp = prompt[len(base):] if prompt.startswith(base) else ""
  return gp if at.startswith(gp) else ""


def _common_prefix(x: str, y: str, limit: int | None = None) -> int:
  """Length of the longest common prefix of x and y (at most `limit`), by bisection on slices."""
  lo, hi = 0, min(len(x), len(y)) if limit is None else min(len(x), len(y), limit)
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if x[:mid] == y[:mid]:
      lo = mid
    else:
      hi = mid - 1
  return lo


def inference_form(messages: Sequence[dict], i: int, text: str, turn: Turn, tokenizer,
                    tools: list | None) -> tuple[str, tuple[int, int]]:
  """The chat with final reply i as the model meets it at inference, for templates that strip its
  reasoning: the generation prompt, then the whole reply (reasoning in think tags, then what the
  template renders of the answer), its end-of-turn marker, and the rest of the chat. Returns
  (text, span of the reply)."""
  prompt = render(messages[:i], tokenizer, tools, add_generation_prompt=True)
  (a, b), end = turn.region, turn.span[1]
  if not prompt.startswith(text[:a]):
    raise DropExample("reasoning_not_rendered",
                      "the chat template drops the reasoning of the final reply and its generation prompt does not "
                      "continue the rendered conversation; set data.reasoning=drop to train the answers only")
  thought, _ = msgs_lib.split_reasoning(messages[i])
  reply = msgs_lib.inline(thought, "") + text[a:b].lstrip()
  head = prompt.rstrip()
  if head.endswith(THINK_OPEN):  # the prompt opens the reasoning itself (DeepSeek-R1): not generated
    reply = reply[len(THINK_OPEN):]
    if len(prompt) > len(head):
      reply = reply.lstrip()
  completion = reply + text[b:end]
  return prompt + completion + text[end:], (len(prompt), len(prompt) + len(completion))
