"""The self-contained demo: `jaxtune train --config configs/demo.py`.

Builds (once, cached) a tiny random Llama, a byte-level tokenizer with the
Llama 3 chat template and synthetic tasks with exact answers, tunes on CPU and
prints held-out exact match before and after. The cache lives in
$JAXTUNE_CACHE/demo (default ~/.cache/jaxtune/demo); another place can be given
after a colon: --config=configs/demo.py:/path/to/cache
"""

from jaxtune.demo.configs import sft_config


def get_config(arg: str | None = None):
  return sft_config(arg or "")
