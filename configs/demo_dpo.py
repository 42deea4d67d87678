"""The preference-tuning demo: `jaxtune train --config configs/demo_dpo.py`.

Starts from the SFT demo's tuned model (configs/demo.py; trained first, once, if the cache lacks it) and
tunes it with DPO on pairs of a correct answer and a plausible wrong one (a sum off by one, two letters
swapped, ...). Prints held-out reward accuracy and greedy exact match before and after. The cache is the
SFT demo's: $JAXTUNE_CACHE/demo (default ~/.cache/jaxtune/demo), or after a colon:
--config=configs/demo_dpo.py:/path/to/cache
"""

from jaxtune.demo.configs import dpo_config


def get_config(arg: str | None = None):
  return dpo_config(arg or "")
