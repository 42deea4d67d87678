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

Anything that does not line up raises `MaskMismatch`: a wrong mask is never
returned silently. Templates with `{% generation %}` go through transformers.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np

from jaxtune.data import templates

MASK_MODES = ("assistant", "last_assistant", "none")
_GENERATION_RE = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PLACEHOLDER = "\u27e6JXT:{}\u27e7"
_PLACEHOLDER_RE = re.compile("\u27e6JXT:(\\d+)\u27e7")
_SPECIAL_RE = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>")


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


def load_tokenizer(model_path: str, chat_template: str = ""):
  """A fast tokenizer from an HF dir, with a chat template it can render.

  `chat_template` (a built-in name or a .jinja path, `data.chat_template`) is
  used when set, else the tokenizer's own template; neither is an error.
  Special tokens the set template writes literally (`<|...|>`, `<start_of_turn>`,
  ...) but the tokenizer lacks are added to it as special tokens (see
  `add_template_tokens`); the model's embeddings must then grow to
  `len(tokenizer)` (`jaxtune.models.resize.resize_vocab`). The added tokens and
  their ids are logged and kept in `tokenizer.jaxtune_added_tokens`.
  """
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
  if not getattr(tok, "is_fast", False):
    raise ValueError(f"tokenizer at {model_path!r} is not a fast tokenizer; offsets are needed for loss masks")
  tok.jaxtune_added_tokens = {}
  if chat_template:
    tok.chat_template = templates.resolve(chat_template)
    added = add_template_tokens(tok, tok.chat_template)
    if added:
      logging.getLogger(__name__).warning(
          "data.chat_template=%r needs special tokens the tokenizer at %s lacks: added %s (vocabulary now %d; "
          "eos %r, pad %r); the model's embeddings grow to match, new rows = the mean of the old ones",
          chat_template, model_path, ", ".join(f"{t}={i}" for t, i in added.items()), len(tok), tok.eos_token,
          tok.pad_token)
  elif not tok.chat_template:
    raise templates.TemplateError(
        f"the tokenizer at {model_path!r} has no chat template: set data.chat_template (jaxtune train) or "
        f"--chat-template (jaxtune generate) to a built-in ({sorted(templates.BUILTIN)}) or a .jinja file")
  return tok


def template_special_tokens(template: str) -> list[str]:
  """Special-token literals a template writes: `<|...|>` tags and the known turn markers, in order."""
  found = {m.group(0): m.start() for m in reversed(list(_SPECIAL_RE.finditer(template)))}
  for t in templates.TURN_TAGS:
    if t in template:
      found.setdefault(t, template.index(t))
  return sorted(found, key=found.get)


def add_template_tokens(tok, template: str) -> dict[str, int]:
  """Adds the special tokens `template` needs and `tok` lacks; returns {token: new id}.

  When tokens are added: a template that renders `bos_token` while the tokenizer
  has none gets the built-in Llama 3 `<|begin_of_text|>` as bos (built-in llama3
  only); eos becomes the template's end-of-turn marker if that marker was added
  (or eos was unset) and the template does not itself render `eos_token`; an
  unset pad becomes eos. `tok.jaxtune_added_tokens` records what was added.
  """
  needed = template_special_tokens(template)
  wants_bos = "bos_token" in template and getattr(tok, "bos_token", None) is None
  if wants_bos and template == templates.LLAMA3:
    needed.insert(0, "<|begin_of_text|>")
  missing = [t for t in needed if not _is_single_token(tok, t)]
  if not missing:
    return {}
  try:
    tok.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
  except TypeError:  # transformers 4.x
    tok.add_special_tokens({"additional_special_tokens": missing}, replace_additional_special_tokens=False)
  still = [t for t in missing if not _is_single_token(tok, t)]
  if still:
    raise ValueError(f"could not add the special tokens {still} the chat template needs to the tokenizer")
  added = {t: int(tok.convert_tokens_to_ids(t)) for t in missing}
  if "<|begin_of_text|>" in added and wants_bos:
    tok.bos_token = "<|begin_of_text|>"
  eot = next((t for t in needed if t in templates.END_OF_TURN), None)
  if eot is not None and "eos_token" not in template and (eot in added or getattr(tok, "eos_token", None) is None):
    tok.eos_token = eot
  if getattr(tok, "pad_token", None) is None and getattr(tok, "eos_token", None) is not None:
    tok.pad_token = tok.eos_token
  tok.jaxtune_added_tokens = {**getattr(tok, "jaxtune_added_tokens", {}), **added}
  return added


def _is_single_token(tok, token: str) -> bool:
  return len(tok.encode(token, add_special_tokens=False)) == 1 and token in tok.get_vocab()


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


def render(messages: Sequence[dict], tokenizer) -> str:
  try:
    return tokenizer.apply_chat_template(list(messages), tokenize=False)
  except Exception as e:  # jinja raise_exception(), missing keys, ...
    raise DropExample("template_error", f"{type(e).__name__}: {e}") from e


def reply_spans(messages: Sequence[dict], text: str, tokenizer, mask: str = "assistant") -> list[tuple[int, int]]:
  """Character spans [start, end) in `text` of the trained replies plus end-of-turn."""
  turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("content")]
  keep = set(turns[-1:] if mask == "last_assistant" else turns)
  marked = [dict(m) for m in messages]
  for k, i in enumerate(turns):
    if _PLACEHOLDER_RE.search(marked[i]["content"]):
      raise MaskMismatch("a reply contains the internal placeholder text")
    marked[i]["content"] = _PLACEHOLDER.format(k)
  parts = _PLACEHOLDER_RE.split(render(marked, tokenizer))
  pieces, order = parts[0::2], [int(k) for k in parts[1::2]]
  if order != list(range(len(turns))):
    raise MaskMismatch(f"the template renders assistant replies {order}, expected {list(range(len(turns)))} once each")
  if not text.startswith(pieces[0]):
    raise MaskMismatch("the rendering before the first reply depends on the replies")
  marks = end_of_turn_markers(tokenizer)
  spans, pos = [], len(pieces[0])
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
    if i in keep:
      spans.append((start, pos + ws + len(mark)))
    pos += len(after)
  if pos != len(text):
    raise MaskMismatch("the rendered chat has text after the last template piece")
  return spans


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


def _generation_mask(messages: Sequence[dict], tokenizer, mask: str) -> tuple[np.ndarray, np.ndarray]:
  """transformers' {% generation %} mask, checked against the replies."""
  try:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
  except Exception as e:
    raise DropExample("template_error", f"{type(e).__name__}: {e}") from e
  ids = np.asarray(out["input_ids"], np.int32)
  gen = np.asarray(out["assistant_masks"], np.int32)
  edges = np.flatnonzero(np.diff(np.concatenate([[0], gen, [0]])))
  runs = list(zip(edges[0::2], edges[1::2]))
  replies = [m["content"] for m in messages if m.get("role") == "assistant" and m.get("content")]
  if len(runs) != len(replies):
    raise MaskMismatch(f"{len(runs)} generation blocks for {len(replies)} assistant replies")
  for (a, b), reply in zip(runs, replies):
    if reply.strip() not in tokenizer.decode(ids[a:b].tolist()):
      raise MaskMismatch("a generation block does not contain its assistant reply")
  if mask == "last_assistant" and runs:
    gen[:runs[-1][0]] = 0
  return ids, gen


def encode_batch(conversations: Sequence[Sequence[dict]], tokenizer,
                 mask: str = "assistant") -> list[tuple[np.ndarray, np.ndarray] | DropExample]:
  """`tokenize_messages` over many conversations, one tokenizer call for all.

  Returns per conversation either (ids, loss_mask) or the DropExample it raised.
  """
  if mask not in MASK_MODES:
    raise ValueError(f"mask={mask!r} not in {MASK_MODES}")
  if has_generation_tags(_template(tokenizer)) and mask != "none":
    return [_guard(lambda c=c: _checked(*_generation_mask(c, tokenizer, mask))) for c in conversations]
  prepared: list[Any] = []
  for conv in conversations:
    try:
      text = render(conv, tokenizer)
      spans = None if mask == "none" else reply_spans(conv, text, tokenizer, mask)
      prepared.append((text, spans))
    except DropExample as e:
      prepared.append(e)
  texts = [p[0] for p in prepared if not isinstance(p, DropExample)]
  enc = encode_texts(tokenizer, texts)
  results, j = [], 0
  for p in prepared:
    if isinstance(p, DropExample):
      results.append(p)
      continue
    text, spans = p
    ids, offsets = enc[j]
    j += 1
    if spans is None:
      results.append(_guard(lambda ids=ids: _checked(ids, np.ones_like(ids))))
    else:
      results.append(_guard(lambda ids=ids, o=offsets, s=spans, t=text: _checked(ids, spans_to_mask(o, s, t))))
  return results


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


def _checked(ids: np.ndarray, loss_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  if ids.size == 0:
    raise DropExample("empty", "the template rendered no tokens")
  if not loss_mask.any():
    raise DropExample("no_loss_tokens", "no token is trained")
  return ids.astype(np.int32), loss_mask.astype(np.int32)


def tokenize_messages(messages: list[dict], tokenizer, mask: str = "assistant") -> tuple[np.ndarray, np.ndarray]:
  """(ids, loss_mask) int32 arrays; loss_mask[t] == 1 iff ids[t] is trained.

  `mask`: "assistant" trains every assistant reply and its end-of-turn token,
  "last_assistant" only the last one, "none" every token. Raises DropExample.
  """
  out = encode_batch([messages], tokenizer, mask)[0]
  if isinstance(out, DropExample):
    raise out
  return out
