"""The rejection-sampling self-improvement demo: `jaxtune train --config configs/demo_rft.py`.

The SFT demo's recipe run for 150 of its 450 steps gives a weak model; it answers 2,000 training prompts 4
times each at temperature 1 (`jaxtune synth --verify exact --keep one-per-prompt`), and is tuned for 150
steps on the answers that were exactly right. Prints held-out exact match before and after. The cache is the
SFT demo's: $JAXTUNE_CACHE/demo (default ~/.cache/jaxtune/demo), or after a colon:
--config=configs/demo_rft.py:/path/to/cache
"""

from jaxtune.demo.configs import rft_config


def get_config(arg: str | None = None):
  return rft_config(arg or "")
