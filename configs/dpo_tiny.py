"""The small CPU recipe for preference tuning (DPO) that tests and quick local runs build on.

Point it at a model dir (an SFT-tuned one, usually) and preference data, e.g.
  jaxtune train --config configs/dpo_tiny.py --config.model.path=/tmp/tiny-sft \
      --config.data.train="({'path': 'pairs.jsonl', 'format': 'preference'},)"
or pass both after a colon: --config=configs/dpo_tiny.py:/tmp/tiny-sft,pairs.jsonl
"""

from jaxtune.recipes import cpu_recipe


def get_config(arg: str | None = None):
  return cpu_recipe(arg, objective="dpo", run="runs/dpo_tiny")
