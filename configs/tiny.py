"""The small CPU recipe that tests and quick local runs build on.

Point it at a model dir and data with overrides, e.g.
  jaxtune train --config configs/tiny.py --config.model.path=/tmp/tiny-llama \
      --config.data.train="({'path': 'chat.jsonl', 'format': 'messages'},)"
or pass both after a colon: --config=configs/tiny.py:/tmp/tiny-llama,chat.jsonl
"""

from jaxtune.recipes import cpu_recipe


def get_config(arg: str | None = None):
  return cpu_recipe(arg)
