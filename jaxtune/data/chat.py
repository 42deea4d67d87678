"""Messages -> (token ids, loss mask) with the tokenizer's own chat template.

Most chat templates (Llama 3, Qwen, the built-ins in `templates.py`) have no
`{% generation %}` tags, so transformers' assistant mask is all zeros for them.
For those the mask is derived from the rendering itself:

1. render the conversation once as text;
2. render it again with every assistant reply replaced by a placeholder, which
   splits the text into the template's literal pieces around the replies;
3. walk the real text piece by piece: each reply must appear verbatim (or
   trimmed, as Llama 3's template does) between its pieces, and is extended over
   the end-of-turn marker that follows it;
4. tokenize the text once with offsets and mark exactly the tokens of those
   character spans.

Assistant turns with tool calls or reasoning (`messages.is_special`) hold more
than their content: the template writes the tool calls in its own syntax and
the reasoning inside think tags. Each such turn is located by rendering the
conversation again with only that turn replaced by a placeholder reply: what
differs between the two renderings is what the template writes for the turn
(from the opening think tag when its reasoning is rendered), and it is trained
through the end-of-turn marker that follows. Templates that drop the reasoning
of the final reply too (DeepSeek-R1's) get it as the model meets it at
inference: the generation prompt, then the whole reply, reasoning included.

Anything that does not line up raises `MaskMismatch`: a wrong mask is never
returned silently. Templates with `{% generation %}` go through transformers.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxtune.data import messages as msgs_lib
from jaxtune.data import templates
from jaxtune.data.messages import THINK_OPEN, Conversation
from jaxtune.data.tokenizer import add_template_tokens, load_tokenizer, template_special_tokens  # noqa: F401

MASK_MODES = ("assistant", "last_assistant", "none")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PLACEHOLDER = "\u27e6JXT:{}\u27e7"
_PLACEHOLDER_RE = re.compile("\u27e6JXT:(\\d+)\u27e7")
_TURN_PLACEHOLDER = "\u27e6JXT:turn\u27e7"
_OPENER_BEFORE_RE = re.compile(re.escape(THINK_OPEN) + r"\s*$")
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


def _template(tokenizer) -> str:
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


def _plain_spans(messages: Sequence[dict], text: str, tokenizer, turns: Sequence[int],
                 tools: list | None) -> dict[int, tuple[int, int]]:
  """{message index: span} of the replies `turns`, each located by a placeholder content."""
  marked = [dict(m) for m in messages]
  for k, i in enumerate(turns):
    if _PLACEHOLDER_RE.search(marked[i]["content"]):
      raise MaskMismatch("a reply contains the internal placeholder text")
    marked[i]["content"] = _PLACEHOLDER.format(k)
  parts = _PLACEHOLDER_RE.split(render(marked, tokenizer, tools))
  pieces, order = parts[0::2], [int(k) for k in parts[1::2]]
  if order != list(range(len(turns))):
    raise MaskMismatch(f"the template renders assistant replies {order}, expected {list(range(len(turns)))} once each")
  if not text.startswith(pieces[0]):
    raise MaskMismatch("the rendering before the first reply depends on the replies")
  marks = end_of_turn_markers(tokenizer)
  spans, pos = {}, len(pieces[0])
  for k, i in enumerate(turns):
    content, after = messages[i]["content"], pieces[k + 1]
    n = _rendered_reply_length(text, pos, content, after, last=k == len(turns) - 1)
    if n is None:
      raise MaskMismatch(f"assistant reply {k} is not in the rendered chat as written (nor a part of it)")
    start, pos = pos, pos + n
    ws = len(after) - len(after.lstrip())
    mark = next((m for m in marks if after.startswith(m, ws)), None)
    if mark is None:
      raise MaskMismatch(f"no end-of-turn marker ({', '.join(marks)}) follows assistant reply {k}: {after[:40]!r}")
    spans[i] = (start, pos + ws + len(mark))
    pos += len(after)
  if pos != len(text):
    raise MaskMismatch("the rendered chat has text after the last template piece")
  return spans


@dataclasses.dataclass
class _Turn:
  """Where a turn with tool calls or reasoning lies in the rendered chat: its trained span (through the
  end-of-turn marker), the region the template wrote for it (header and marker excluded), and whether
  its reasoning is rendered there."""
  span: tuple[int, int]
  region: tuple[int, int]
  reasoning_rendered: bool


def _special_turn(messages: Sequence[dict], i: int, text: str, tokenizer, tools: list | None) -> _Turn:
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
  return _Turn((start, b + ws + len(mark)), (a, b), rendered)


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


def _inference_form(messages: Sequence[dict], i: int, text: str, turn: _Turn, tokenizer,
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


class Layout(NamedTuple):
  """A conversation as rendered for training (`layout`)."""
  text: str
  spans: list | None  # None: every token is trained (mask "none")
  not_rendered: list
  reasoning: bool
  tool_calls: bool


def _uses_tools(tokenizer) -> bool:
  """Whether the template's code (not its comments) reads `tools` or `tool_calls`."""
  return bool(_TOOL_NAMES_RE.search(_JINJA_COMMENT_RE.sub("", _template(tokenizer) or "")))


_FIELD_SUPPORT: dict[str, bool] = {}


def renders_reasoning_field(tokenizer) -> bool:
  """Whether the chat template renders an assistant message's `reasoning_content` (cached per template)."""
  t = _template(tokenizer) or ""
  if t not in _FIELD_SUPPORT:
    probe = [{"role": "user", "content": "u"},
             {"role": "assistant", "content": "a", msgs_lib.REASONING_FIELD: _PROBE}]
    try:
      _FIELD_SUPPORT[t] = _PROBE in render(probe, tokenizer)
    except DropExample:
      _FIELD_SUPPORT[t] = False
  return _FIELD_SUPPORT[t]


def layout(conv: Conversation | Sequence[dict], tokenizer, mask: str = "assistant", *,
           reasoning: str = "train", system: str = "keep") -> Layout:
  """The rendered text of a conversation and the character spans to train (see the module doc)."""
  conv = msgs_lib.as_conversation(conv)
  with_reasoning, with_calls = _flags(conv)
  if (with_calls or conv.tools) and not _uses_tools(tokenizer):
    raise DropExample("tools_unsupported", "the chat template has no tool support (it never reads tools / tool_calls)")
  msgs = _prepared(conv, tokenizer, reasoning, system)
  text = render(msgs, tokenizer, conv.tools)
  if conv.tools and render(msgs, tokenizer) == text:
    raise DropExample("tools_unsupported", "the chat template does not render the record's tools list")
  special = [i for i, m in enumerate(msgs) if msgs_lib.is_special(m)]
  spans = None
  if mask != "none" or any(msgs_lib.has_reasoning(msgs[i]) for i in special):  # the text may change
    text, spans = _spans(msgs, text, tokenizer, conv.tools, special, mask)
  return Layout(text, None if mask == "none" else spans, msgs_lib.not_rendered(msgs, text), with_reasoning,
                 with_calls)


def _spans(msgs: list[dict], text: str, tokenizer, tools: list | None, special: list[int],
           mask: str) -> tuple[str, list[tuple[int, int]]]:
  plain = [i for i, m in enumerate(msgs) if m.get("role") == "assistant" and m.get("content") and i not in special]
  replies = sorted(plain + special)
  spans = _plain_spans(msgs, text, tokenizer, plain, tools) if plain else {}
  for i in special:
    turn = _special_turn(msgs, i, text, tokenizer, tools)
    if msgs_lib.has_reasoning(msgs[i]) and not turn.reasoning_rendered and i == len(msgs) - 1:
      if any(e > turn.region[0] for e in (s[1] for s in spans.values())):
        raise MaskMismatch("a trained span follows the final reply")
      text, spans[i] = _inference_form(msgs, i, text, turn, tokenizer, tools)
    else:
      spans[i] = turn.span
  ordered = [spans[i] for i in sorted(spans)]
  if any(b0 > a1 for (_, b0), (a1, _) in zip(ordered, ordered[1:])):
    raise MaskMismatch("the trained spans of two assistant turns overlap")
  keep = replies[-1:] if mask == "last_assistant" else replies
  return text, [spans[i] for i in keep]


def _rendered_reply_length(text: str, pos: int, content: str, after: str, last: bool) -> int | None:
  """Length of the reply rendered at text[pos:], which the template piece `after` follows.

  Verbatim or trimmed (Llama 3) first. Failing that, the text up to the next
  piece, if it is a part of the reply (e.g. earlier turns rendered without their
  reasoning) or wraps it (e.g. reasoning rendered around the last reply).
  None when neither holds.
  """
  for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
    if cand and text.startswith(cand, pos) and text.startswith(after, pos + len(cand)):
      return len(cand)
  end = len(text) - len(after) if last else text.find(after, pos)
  if end < pos or not text.startswith(after, end):
    return None
  shown = text[pos:end].strip()
  if shown and (shown in content or content.strip() in shown):
    return end - pos
  return None


def spans_to_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]], text: str) -> np.ndarray:
  """1 for the tokens that exactly cover each character span, else 0.

  `offsets` is [n, 2] (start, end) per token. A token may begin before a span
  only over whitespace; a token that crosses a span's end is a mismatch.
  """
  mask = np.zeros(len(offsets), np.int32)
  if len(offsets) == 0:
    return mask
  starts, ends = offsets[:, 0], offsets[:, 1]
  for a, b in spans:
    idx = np.flatnonzero((ends > a) & (starts < b))
    if idx.size == 0:
      raise MaskMismatch(f"no token covers characters [{a}, {b})")
    first, last = idx[0], idx[-1]
    if starts[first] < a and text[starts[first]:a].strip():
      raise MaskMismatch(f"token {first} {text[starts[first]:ends[first]]!r} straddles the start of a reply")
    if ends[last] != b:
      raise MaskMismatch(f"token {last} {text[starts[last]:ends[last]]!r} straddles the end of a reply")
    mask[first:last + 1] = 1
  return mask


def _prepared(conv: Conversation, tokenizer, reasoning: str, system: str) -> list[dict]:
  field = any(m.get(msgs_lib.REASONING_FIELD) for m in conv.messages) and renders_reasoning_field(tokenizer)
  try:
    return msgs_lib.for_template(conv, reasoning=reasoning, system=system, renders_reasoning_field=field)
  except ValueError as e:
    raise DropExample("bad_tool_call", str(e)) from e


def _generation_mask(conv: Conversation, tokenizer, mask: str, reasoning: str, system: str) -> "Encoded":
  """transformers' {% generation %} mask, checked against the replies."""
  messages = _prepared(conv, tokenizer, reasoning, system)
  try:
    out = tokenizer.apply_chat_template(messages, tools=conv.tools, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
  except Exception as e:
    raise DropExample("template_error", f"{type(e).__name__}: {e}") from e
  ids = np.asarray(out["input_ids"], np.int32)
  gen = np.asarray(out["assistant_masks"], np.int32)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], gen, [0]])))
  runs = list(zip(edges[0::2], edges[1::2]))
  replies = [msgs_lib.split_reasoning(m)[1] for m in messages
             if m.get("role") == "assistant" and (m.get("content") or m.get("tool_calls"))]
  if len(runs) != len(replies):
    raise MaskMismatch(f"{len(runs)} generation blocks for {len(replies)} assistant replies")
  for (a, b), reply in zip(runs, replies):
    if reply.strip() not in tokenizer.decode(ids[a:b].tolist()):
      raise MaskMismatch("a generation block does not contain its assistant reply")
  if mask == "last_assistant" and runs:
    gen[:runs[-1][0]] = 0
  lost = msgs_lib.not_rendered(messages, render(messages, tokenizer, conv.tools))
  return _checked(ids, gen, Layout("", None, lost, *_flags(conv)))


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A tokenized example: int32 ids and loss mask (it unpacks as `ids, loss_mask = encoded`), and what
  the rendering did with its messages."""
  ids: np.ndarray
  loss_mask: np.ndarray
  not_rendered: tuple = ()  # roles of the system/user/tool messages the template did not render
  reasoning: bool = False  # an assistant message carries reasoning
  tool_calls: bool = False  # an assistant message calls tools

  def __iter__(self):
    return iter((self.ids, self.loss_mask))


def encode_batch(conversations: Sequence[Conversation | Sequence[dict]], tokenizer, mask: str = "assistant", *,
                 reasoning: str = "train", system: str = "keep") -> list[Encoded | DropExample]:
  """`tokenize_messages` over many conversations (message lists or `Conversation`s with tools),
  one tokenizer call for all. Returns per conversation an `Encoded` or the DropExample it raised.
  `reasoning` / `system`: `data.reasoning` and `data.system` (`messages.for_template`).
  """
  if mask not in MASK_MODES:
    raise ValueError(f"mask={mask!r} not in {MASK_MODES}")
  convs = [msgs_lib.as_conversation(c) for c in conversations]
  if has_generation_tags(_template(tokenizer)) and mask != "none":
    return [_guard(lambda c=c: _generation_mask(c, tokenizer, mask, reasoning, system)) for c in convs]
  prepared: list[Any] = [_guard(lambda c=c: layout(c, tokenizer, mask, reasoning=reasoning, system=system))
                         for c in convs]
  enc = iter(encode_texts(tokenizer, [p.text for p in prepared if not isinstance(p, DropExample)]))
  results = []
  for p in prepared:
    if isinstance(p, DropExample):
      results.append(p)
      continue
    ids, offsets = next(enc)
    if p.spans is None:
      results.append(_guard(lambda ids=ids, p=p: _checked(ids, np.ones_like(ids), p)))
    else:
      results.append(_guard(lambda ids=ids, o=offsets, p=p: _checked(ids, spans_to_mask(o, p.spans, p.text), p)))
  return results


def _flags(conv: Conversation) -> tuple[bool, bool]:
  return (any(msgs_lib.has_reasoning(m) for m in conv.messages),
          any(m.get("role") == "assistant" and bool(m.get("tool_calls")) for m in conv.messages))


def encode_texts(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
  """(ids int32 [n], char offsets int64 [n, 2]) per text, no special tokens added.

  Straight through the Rust tokenizer (what the fast tokenizer's __call__ runs,
  minus converting every encoding to Python lists twice).
  """
  if not texts:
    return []
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is None:
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    pairs = zip(enc["input_ids"], enc["offset_mapping"])
  else:
    pairs = ((e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False))
  return [(np.asarray(i, np.int32), np.asarray(o, np.int64).reshape(-1, 2)) for i, o in pairs]


def _guard(fn):
  try:
    return fn()
  except DropExample as e:
    return e


def _checked(ids: np.ndarray, loss_mask: np.ndarray, lay: Layout) -> Encoded:
  if ids.size == 0:
    raise DropExample("empty", "the template rendered no tokens")
  if not loss_mask.any():
    raise DropExample("no_loss_tokens", "no token is trained")
  return Encoded(ids.astype(np.int32), loss_mask.astype(np.int32), tuple(lay.not_rendered), lay.reasoning,
                 lay.tool_calls)


def tokenize_messages(messages: Conversation | list[dict], tokenizer, mask: str = "assistant", *,
                      reasoning: str = "train", system: str = "keep") -> tuple[np.ndarray, np.ndarray]:
  """(ids, loss_mask) int32 arrays; loss_mask[t] == 1 iff ids[t] is trained.

  `mask`: "assistant" trains every assistant reply and its end-of-turn token,
  "last_assistant" only the last one, "none" every token. Raises DropExample.
  """
  out = encode_batch([messages], tokenizer, mask, reasoning=reasoning, system=system)[0]
  if isinstance(out, DropExample):
    raise out
  return out.ids, out.loss_mask
