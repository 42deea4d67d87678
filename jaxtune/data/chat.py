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
than their content; `turns.locate` finds them, and `turns.inference_form`
rebuilds a final reply whose reasoning the template strips (DeepSeek-R1's).
System/user/tool messages the rendering lost are reported (`Encoded.not_rendered`).

Anything that does not line up raises `MaskMismatch`: a wrong mask is never
returned silently. Templates with `{% generation %}` go through transformers.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxtune.data import messages as msgs_lib
from jaxtune.data import turns
from jaxtune.data.messages import Conversation
from jaxtune.data.rendering import (DropExample, MaskMismatch, end_of_turn_markers, has_generation_tags,  # noqa: F401
                                    render, renders_reasoning_field, template_of, uses_tools)
from jaxtune.data.tokenizer import add_template_tokens, load_tokenizer, template_special_tokens  # noqa: F401

MASK_MODES = ("assistant", "last_assistant", "none")
_PLACEHOLDER = "\u27e6JXT:{}\u27e7"
_PLACEHOLDER_RE = re.compile("\u27e6JXT:(\\d+)\u27e7")


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


class Layout(NamedTuple):
  """A conversation as rendered for training (`layout`)."""
  text: str
  spans: list | None  # None: every token is trained (mask "none")
  not_rendered: list
  reasoning: bool
  tool_calls: bool


def layout(conv: Conversation | Sequence[dict], tokenizer, mask: str = "assistant", *,
           reasoning: str = "train", system: str = "keep") -> Layout:
  """The rendered text of a conversation and the character spans to train (see the module doc)."""
  conv = msgs_lib.as_conversation(conv)
  with_reasoning, with_calls = _flags(conv)
  if (with_calls or conv.tools) and not uses_tools(tokenizer):
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
    turn = turns.locate(msgs, i, text, tokenizer, tools)
    if msgs_lib.has_reasoning(msgs[i]) and not turn.reasoning_rendered and i == len(msgs) - 1:
      if any(e > turn.region[0] for e in (s[1] for s in spans.values())):
        raise MaskMismatch("a trained span follows the final reply")
      text, spans[i] = turns.inference_form(msgs, i, text, turn, tokenizer, tools)
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
  if has_generation_tags(template_of(tokenizer)) and mask != "none":
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
  # fromiter over the flattened offsets: half the time of np.asarray on a list of tuples
  return [(np.fromiter(i, np.int32, len(i)), np.fromiter(itertools.chain.from_iterable(o), np.int64,
                                                          2 * len(o)).reshape(-1, 2)) for i, o in pairs]


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
