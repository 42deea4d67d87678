"""Training objectives, one module each; `for_config(cfg)` picks the one `train.objective` names."""

from __future__ import annotations

from jaxtune.errors import ConfigError
from jaxtune.train.objectives.base import Objective, Policy, PrepareContext
from jaxtune.train.objectives.distill import Distill
from jaxtune.train.objectives.dpo import DPO
from jaxtune.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {SFT.name: SFT, DPO.name: DPO, Distill.name: Distill}


def for_config(cfg) -> Objective:
  if cfg.train.objective not in OBJECTIVES:
    raise ConfigError(f"config key 'train.objective': {cfg.train.objective!r} is not implemented; "
                      f"have {sorted(OBJECTIVES)}")
  return OBJECTIVES[cfg.train.objective].from_config(cfg)


__all__ = ["Objective", "Policy", "PrepareContext", "OBJECTIVES", "for_config", "SFT", "DPO", "Distill"]
