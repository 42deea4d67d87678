"""Built-in chat templates for base models that ship without one (`data.chat_template`).

Written in the tokenizer chat-template dialect (Jinja, `messages`, `bos_token`,
`add_generation_prompt`). Neither has `{% generation %}` tags, like the official
Llama 3 and Qwen templates: jaxtune derives loss masks from the rendering itself.
"""

from __future__ import annotations

import os
import re

from jaxtune.errors import TemplateError  # noqa: F401 - raised here, defined with the other user errors

LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

BUILTIN = {"llama3": LLAMA3, "chatml": CHATML}

# Special tokens each built-in template uses (`chat.load_tokenizer` adds those a tokenizer lacks,
# found in the template text itself, so .jinja templates get the same treatment).
SPECIAL_TOKENS = {
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}

# Turn tags other than `<|...|>` ones that templates write literally (Gemma).
TURN_TAGS = ("<start_of_turn>", "<end_of_turn>")

# Markers the known families write literally that are single tokens in their own tokenizers but do not
# have a special-token shape: Gemma's turn tags, Mistral's, Qwen's reasoning and tool tags, sentencepiece's.
KNOWN_MARKERS = TURN_TAGS + (
    "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
    "<s>", "</s>",
)
# Of those, the ones that are text the model writes, not control tokens: added as ordinary (non-special)
# tokens, so decoding with skip_special_tokens keeps them, as in Qwen's tokenizers.
CONTENT_MARKERS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

# End-of-turn markers, one per template family; generation stops on these.
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "</s>", "<|end|>",
               "<\uff5cend\u2581of\u2581sentence\uff5c>")

# Special-token shapes: <|...|>, DeepSeek's full-width <｜...｜>, Mistral's [INST]-style upper-case tags.
_SPECIAL_SHAPE_RE = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>|<\uff5c[^\uff5c<>\s]+\uff5c>|\[/?[A-Z][A-Z_]{2,}\]")
_BRACKETED_RE = re.compile(r"<[^<>\s]{1,64}>|\[[^\[\]\s]{1,64}\]")


def literal_text(template: str) -> str:
  """The text a template can write verbatim: its literal data and string constants (not its
  comments or code), in source order, separated by NUL so no literal runs into the next."""
  import jinja2
  try:
    tokens = list(jinja2.Environment().lexer.tokenize(template))
  except jinja2.TemplateSyntaxError:
    return template
  return "\0".join(str(t.value) for t in tokens if t.type in ("data", "string"))


def special_literals(template: str) -> list[str]:
  """Special-token strings a template writes: every `<...>` or `[...]` among its literals that has a
  special-token shape (`<|eot_id|>`, `<｜User｜>`, `[INST]`) or is a known family's marker
  (`<start_of_turn>`, `<think>`, ...), in order of first appearance. Other bracketed text (Qwen's
  `<tools>`, placeholders like `<function-name>`) is left as text."""
  found = []
  for m in _BRACKETED_RE.finditer(literal_text(template)):
    for t in ([m.group(0)] if m.group(0) in KNOWN_MARKERS else _SPECIAL_SHAPE_RE.findall(m.group(0))):
      if t not in found:
        found.append(t)
  return found


def resolve(name_or_path: str) -> str:
  """A built-in template by name, or the text of a .jinja file."""
  if name_or_path in BUILTIN:
    return BUILTIN[name_or_path]
  if os.path.isfile(name_or_path):
    with open(name_or_path, encoding="utf-8") as f:
      return f.read()
  raise TemplateError(
      f"chat template {name_or_path!r} is neither a built-in ({sorted(BUILTIN)}) nor a readable file")
