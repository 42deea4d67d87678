"""Supervised fine-tuning: next-token cross-entropy on the trained (assistant) tokens.

The loss of a batch is the summed NLL of its trained targets; it is divided by the
number of trained targets of the global batch (`totals`), the definition TRL's
SFTTrainer uses (`num_items_in_batch`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxtune.train import loss as loss_lib
from jaxtune.train.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class SFT(Objective):
  name: ClassVar[str] = "sft"
  loss_chunk: int = 0  # > 0: cross-entropy over this many positions at a time

  @classmethod
  def from_config(cls, cfg) -> "SFT":
    return cls(loss_chunk=cfg.train.loss_chunk)

  def pipeline(self, cfg, tokenizer, split: str = "train"):
    from jaxtune.data.pipeline import build_pipeline
    return build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.train.seed, split=split)

  def totals(self, batch):
    return {"count": loss_lib.count_loss_tokens(batch)}

  def loss(self, policy, batch, frozen, totals):
    loss_sum, _ = loss_lib.model_xent(policy(), batch, self.loss_chunk)
    return loss_sum, {}
