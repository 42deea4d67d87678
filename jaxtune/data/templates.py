"""Built-in chat templates for base models that ship without one (`data.chat_template`).

Written in the tokenizer chat-template dialect (Jinja, `messages`, `bos_token`,
`add_generation_prompt`). Neither has `{% generation %}` tags, like the official
Llama 3 and Qwen templates: jaxtune derives loss masks from the rendering itself.
"""

from __future__ import annotations

import os
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

# End-of-turn markers, one per template family; generation stops on these.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "</s>", "<|end|>")




def resolve(name_or_path: str) -> str:
  """A built-in template by name, or the text of a .jinja file."""
  if name_or_path in BUILTIN:
    return BUILTIN[name_or_path]
  if os.path.isfile(name_or_path):
    with open(name_or_path, encoding="utf-8") as f:
      return f.read()
  raise TemplateError(
      f"chat template {name_or_path!r} is neither a built-in ({sorted(BUILTIN)}) nor a readable file")
