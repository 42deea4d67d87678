"""A fast tokenizer with a chat template it can render, and the template's special tokens.

`load_tokenizer` is what training, `data stats` and `generate` load. A template
set through `data.chat_template` (a built-in or a .jinja file) may write markers
the tokenizer lacks, `[INST]` or `<think>`: they are added as single tokens
(`add_template_tokens`), and the model's embeddings then grow to `len(tokenizer)`
(`jaxtune.models.resize`).
"""

from __future__ import annotations

import glob
import logging
import os

from jaxtune.data import templates
from jaxtune.errors import CheckpointError, TemplateError


VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "*.tiktoken")


def check_tokenizer_files(model_path: str) -> None:
  """A local model dir holds a vocabulary file; otherwise transformers would try to convert a slow tokenizer
  and blame a missing sentencepiece."""
  if os.path.isdir(model_path) and not any(glob.glob(os.path.join(glob.escape(model_path), f)) for f in VOCAB_FILES):
    raise CheckpointError(f"{model_path} has no tokenizer files (one of {', '.join(VOCAB_FILES)}); copy the "
                          "tokenizer of the model into it (tokenizer.json and tokenizer_config.json)")


def load_tokenizer_files(model_path: str):
  """transformers' AutoTokenizer of a model dir (or hub id); a local dir without tokenizer files, or files
  transformers cannot read, is a CheckpointError naming the dir."""
  from transformers import AutoTokenizer
  check_tokenizer_files(model_path)
  try:
    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
  except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as e:
    first = (str(e).strip().splitlines() or [""])[0]
    raise CheckpointError(f"cannot load the tokenizer in {model_path}: {type(e).__name__}: {first}") from e


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
  tok = load_tokenizer_files(model_path)
  if not getattr(tok, "is_fast", False):
    raise CheckpointError(f"tokenizer at {model_path!r} is not a fast tokenizer; offsets are needed for loss masks")
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
    raise TemplateError(
        f"the tokenizer at {model_path!r} has no chat template: set data.chat_template (jaxtune train) or "
        f"--chat-template (jaxtune generate) to a built-in ({sorted(templates.BUILTIN)}) or a .jinja file")
  return tok


def template_special_tokens(template: str) -> list[str]:
  """Special-token literals a template writes (`templates.special_literals`), in order."""
  return templates.special_literals(template)


def add_template_tokens(tok, template: str) -> dict[str, int]:
  """Adds the special tokens `template` writes and `tok` lacks; returns {token: new id}.

  Every `<...>` / `[...]` literal of a special-token shape or a known family's
  marker (`templates.special_literals`) that does not encode to one token is
  added: control tokens as special tokens, the text markers the model writes
  (`<think>`, `<tool_call>`, ...) as ordinary added tokens, as Qwen's are.
  When tokens are added: a template that renders `bos_token` while the tokenizer
  has none gets the built-in Llama 3 `<|begin_of_text|>` as bos (built-in llama3
  only); eos becomes the template's end-of-turn marker if that marker was added
  (or eos was unset) and the template does not itself render `eos_token`; an
  unset pad becomes eos. `tok.jaxtune_added_tokens` records what was added.
  """
  from tokenizers import AddedToken
  needed = template_special_tokens(template)
  wants_bos = "bos_token" in template and getattr(tok, "bos_token", None) is None
  if wants_bos and template == templates.LLAMA3:
    needed.insert(0, "<|begin_of_text|>")
  missing = [t for t in needed if not _is_single_token(tok, t)]
  if not missing:
    return {}
  for t in missing:  # one at a time: ids follow the template's order
    if t in templates.CONTENT_MARKERS:
      tok.add_tokens([AddedToken(t, special=False, normalized=False)])
      continue
    try:
      tok.add_special_tokens({"extra_special_tokens": [t]}, replace_extra_special_tokens=False)
    except TypeError:  # transformers 4.x
      tok.add_special_tokens({"additional_special_tokens": [t]}, replace_additional_special_tokens=False)
  still = [t for t in missing if not _is_single_token(tok, t)]
  if still:
    raise TemplateError(f"could not add the special tokens {still} the chat template needs to the tokenizer")
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
