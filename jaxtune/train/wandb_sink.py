"""Weights & Biases as one more destination of the metrics rows (log.wandb_project), on process 0.

The W&B run gets the resolved config, every numeric value of every metrics.jsonl row (x axis: the row's
`step`, declared with `define_metric`, so a resumed run that logs a step again after its last checkpoint
stays on the same axis), and the eval-prompt samples as a table (`eval/samples`). The run id is kept in
RUN_DIR/wandb_run_id: a resumed run continues the same W&B run (`resume="allow"`). `WANDB_MODE=offline`
writes the run under WANDB_DIR for a later `wandb sync`.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from typing import Any

from jaxtune import io, rundir
from jaxtune.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("step", "prompt", "completion", "reference", "exact")


def require_wandb():
  try:
    import wandb
  except ImportError:
    raise ConfigError("config key 'log.wandb_project' is set but wandb is not installed: pip install "
                      "'jaxtune[wandb]'") from None
  return wandb


class WandbSink:

  def __init__(self, cfg, run_dir: str):
    wandb = require_wandb()
    id_file = rundir.path(run_dir, rundir.WANDB_ID)
    run_id = io.read_text(id_file).strip() if io.exists(id_file) else secrets.token_hex(4)
    lg = cfg.log
    self.run = wandb.init(project=lg.wandb_project, entity=lg.wandb_entity or None,
                          name=lg.wandb_run_name or os.path.basename(os.path.normpath(run_dir)),
                          tags=[t.strip() for t in lg.wandb_tags.split(",") if t.strip()] or None,
                          id=run_id, resume="allow")
    self.run.config.update(cfg.to_dict(), allow_val_change=True)  # a resumed run may change e.g. train.steps
    if not io.exists(id_file):
      io.write_text(id_file, run_id + "\n")
    self.run.define_metric("step")
    self.run.define_metric("*", step_metric="step")
    self._wandb = wandb
    log.info("W&B run %s (%s)%s", self.run.id, self.run.name,
             f": {self.run.url}" if getattr(self.run, "url", None) else "")

  def write(self, row: dict[str, Any]) -> None:
    values = {_name(k): v for k, v in row.items() if k != "step" and isinstance(v, (int, float))
              and not isinstance(v, bool) and math.isfinite(v)}
    self.run.log({"step": int(row["step"]), **values})

  def write_samples(self, step: int, samples: list[dict]) -> None:
    rows = [[step, s["messages"][-1]["content"], s["completion"], s.get("reference"), s.get("exact")]
            for s in samples]
    self.run.log({"step": step, "eval/samples": self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)})

  def close(self) -> None:
    self.run.finish()


def _name(key: str) -> str:
  """The chart of a metrics.jsonl key, grouped as TensorBoard groups them (train/..., eval/...)."""
  return f"eval/{key}" if key.startswith("eval") else f"train/{key}"
