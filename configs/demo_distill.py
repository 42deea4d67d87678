"""The distillation demo: `jaxtune train --config configs/demo_distill.py`.

A student a quarter of the SFT demo model's size is distilled from that tuned model (configs/demo.py; built
first, once, if the cache lacks it) on the SFT demo's data, and the same student is tuned by SFT on the same
data, steps and batch; prints the held-out exact match of the teacher and of both students. The cache is the
SFT demo's: $JAXTUNE_CACHE/demo (default ~/.cache/jaxtune/demo), or after a colon:
--config=configs/demo_distill.py:/path/to/cache
"""

from jaxtune.demo.configs import distill_config


def get_config(arg: str | None = None):
  return distill_config(arg or "")
