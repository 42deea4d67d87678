"""Preference pairs: records -> (prompt, chosen, rejected) -> tokenized sides with checked masks.

Record forms (format `preference`, and `auto` when a record has `chosen` and `rejected`):

  explicit prompt  {"prompt": [messages...], "chosen": [assistant message(s)], "rejected": [...]}
  implicit prompt  {"chosen": [full conversation], "rejected": [full conversation]}: the shared
                   leading turns are the prompt; what follows must be assistant turns only
  plain strings    {"prompt": "...", "chosen": "...", "rejected": "..."} (+ optional "system"):
                   one user turn and one assistant reply

Each side is rendered with the model's own chat template, exactly as SFT renders a
conversation; its trained tokens are its final assistant reply and the end-of-turn
marker that closes it (`chat.encode_batch` with mask "last_assistant", which works
without `{% generation %}` tags). The prompt tokens of both sides must be identical
and equal what the template gives for the prompt with the generation prompt, and no
trained token may come before them; a pair the template renders otherwise is
dropped with the reason `prompt_mismatch` (strict mode fails).

A pair is stored as two consecutive sequences of an ExampleStore (chosen, then
rejected): one unit of the pipeline, which always places both in the same row
(packed) or in two consecutive rows of the same batch (unpacked).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from jaxtune.data import chat
from jaxtune.data.records import MalformedRecord, validate

GROUP = 2  # sequences per pair: chosen, rejected


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt: list[dict]  # the turns before the replies (ends with a user or tool turn)
  chosen: list[dict]  # the preferred reply: assistant message(s)
  rejected: list[dict]  # the other one


def is_preference(record: Any) -> bool:
  return isinstance(record, dict) and "chosen" in record and "rejected" in record


def _messages(v: Any, key: str) -> list[dict] | str:
  if isinstance(v, str):
    return v
  if isinstance(v, dict):
    v = [v]
  if not isinstance(v, list) or not all(isinstance(m, dict) and "role" in m for m in v):
    raise MalformedRecord("bad_schema", f"'{key}' must be a string or a list of messages with a 'role'")
  return [dict(m) for m in v]


def to_pair(record: Any) -> Pair:
  """One record as a validated Pair; MalformedRecord (with a reason) otherwise."""
  if not isinstance(record, dict):
    raise MalformedRecord("not_an_object", f"record is a {type(record).__name__}")
  if not is_preference(record):
    raise MalformedRecord("not_a_pair", f"keys {sorted(record)[:8]}: a preference record has 'chosen' and 'rejected'")
  chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
  system = record.get("system")
  if system is not None and not isinstance(system, str):
    raise MalformedRecord("bad_content", "'system' is not a string")
  head = [{"role": "system", "content": system}] if system else []
  prompt = record.get("prompt")
  if prompt is None:  # implicit: the shared leading turns are the prompt
    if isinstance(chosen, str) or isinstance(rejected, str):
      raise MalformedRecord("bad_schema", "without a 'prompt', 'chosen' and 'rejected' must be conversations")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
      n += 1
    prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
      if not msgs or any(m.get("role") != "assistant" for m in msgs):
        raise MalformedRecord("implicit_prompt_mismatch",
                              f"the conversations differ before their final assistant reply ({side})")
  elif isinstance(prompt, str):
    prompt = [{"role": "user", "content": prompt}]
  else:
    prompt = _messages(prompt, "prompt")
  as_reply = lambda x: [{"role": "assistant", "content": x}] if isinstance(x, str) else x  # noqa: E731
  chosen, rejected = as_reply(chosen), as_reply(rejected)
  prompt = head + list(prompt)
  if not prompt or prompt[-1].get("role") not in ("user", "tool"):
    raise MalformedRecord("no_prompt", "the prompt has no user turn to reply to")
  for side, msgs in (("chosen", chosen), ("rejected", rejected)):
    if not msgs or any(m.get("role") != "assistant" for m in msgs):
      raise MalformedRecord("bad_schema", f"'{side}' must be assistant message(s)")
  validate(prompt + chosen)
  validate(prompt + rejected)
  if chosen == rejected:
    raise MalformedRecord("chosen_equals_rejected", "the chosen and rejected replies are the same")
  return Pair(prompt=prompt, chosen=chosen, rejected=rejected)


def prompt_ids(prompts: Sequence[Sequence[dict]], tokenizer) -> list[np.ndarray | chat.DropExample]:
  """Token ids of each prompt rendered with the generation prompt, as generation sees it."""
  texts: list[Any] = []
  for p in prompts:
    try:
      texts.append(tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False))
    except Exception as e:  # noqa: BLE001 - jinja raise_exception(), missing keys, ...
      texts.append(chat.DropExample("template_error", f"{type(e).__name__}: {e}"))
  ok = [t for t in texts if isinstance(t, str)]
  enc = iter(chat.encode_texts(tokenizer, ok))
  return [t if isinstance(t, chat.DropExample) else next(enc)[0] for t in texts]


def encode_pairs(pairs: Sequence[Pair], tokenizer) -> list[tuple[np.ndarray, ...] | chat.DropExample]:
  """Per pair (chosen ids, chosen mask, rejected ids, rejected mask, prompt length) or the DropExample that
  says why it cannot be used."""
  convs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
  sides = chat.encode_batch(convs, tokenizer, "last_assistant")
  prompts = prompt_ids([p.prompt for p in pairs], tokenizer)
  out: list[Any] = []
  for i in range(len(pairs)):
    c, r, pr = sides[i], sides[len(pairs) + i], prompts[i]
    bad = next((x for x in (c, r, pr) if isinstance(x, chat.DropExample)), None)
    if bad is not None:
      out.append(bad)
      continue
    (c_ids, c_mask), (r_ids, r_mask) = c, r
    n = len(pr)
    if not (np.array_equal(c_ids[:n], pr) and np.array_equal(r_ids[:n], pr)):
      out.append(chat.DropExample("prompt_mismatch", "the template renders the prompt tokens differently in the "
                                  "chosen and rejected conversations, or differently from the prompt alone"))
      continue
    if c_mask[:n].any() or r_mask[:n].any():
      out.append(chat.DropExample("prompt_mismatch", "a trained token lies inside the prompt"))
      continue
    if np.array_equal(c_ids, r_ids):
      out.append(chat.DropExample("chosen_equals_rejected", "both sides render to the same tokens"))
      continue
    out.append((c_ids, c_mask, r_ids, r_mask, n))
  return out


def fit_pair(c_ids, c_mask, r_ids, r_mask, prompt_len: int, *, seq_len: int, packed: bool, overlong: str):
  """A pair fitted to seq_len: both sides in one row when `packed`, else each side in its own row. Too long:
  dropped, or with overlong="truncate" prompt tokens are removed from the left of both sides (the same
  number, so the prompts stay identical); replies are never cut. Returns (c_ids, c_mask, r_ids, r_mask,
  truncated) or raises DropExample."""
  need = len(c_ids) + len(r_ids) if packed else max(len(c_ids), len(r_ids))
  over = need - seq_len
  if over <= 0:
    return c_ids, c_mask, r_ids, r_mask, False
  if overlong != "truncate":
    raise chat.DropExample("overlong", f"{need} tokens > seq_len={seq_len}" + (" (both sides share a row)"
                                                                              if packed else ""))
  k = -(-over // 2) if packed else over  # tokens cut from each side's prompt
  if k >= prompt_len:  # even without its prompt the pair does not fit
    raise chat.DropExample("overlong", f"the replies alone (after one prompt token each) need more than "
                           f"seq_len={seq_len} tokens")
  return c_ids[k:], c_mask[k:], r_ids[k:], r_mask[k:], True
