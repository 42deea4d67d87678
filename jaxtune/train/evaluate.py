"""Eval loss over a fixed held-out set: every example once, the same batches every time."""

from __future__ import annotations

from typing import Any, Callable

import jax

from jaxtune.mesh import global_batch
from jaxtune.train.objectives.base import Objective
from jaxtune.train.step import jit_eval_step


def make_evaluator(pipe, graphdef, state_shardings, batch_sharding, *, objective: Objective, frozen: Any = None,
                   frozen_shardings: Any = None) -> Callable:
  """`evaluate(state) -> {"eval_loss", "eval_tokens", "eval_<metric>"...}` over all of `pipe`'s examples.

  `pipe` holds the whole eval set on every process (global batches); each process feeds its own rows, as
  in training. eval_loss is the summed held-out loss over the objective's count (trained tokens for SFT).
  """
  batches = [global_batch(b, batch_sharding) for b in pipe.one_pass()]
  step = jit_eval_step(graphdef, state_shardings, batch_sharding, objective=objective,
                       frozen_shardings=frozen_shardings)
  extra = (frozen,) if objective.has_frozen else ()

  def evaluate(state) -> dict[str, float]:
    total = count = tokens = 0.0
    sums: dict[str, list[float]] = {}
    for o in jax.device_get([step(state, b, *extra) for b in batches]):
      total += float(o["loss_sum"])
      count += float(o["count"])
      tokens += float(o["loss_tokens"])
      for k, (s, w) in o["metrics"].items():
        acc = sums.setdefault(k, [0.0, 0.0])
        acc[0] += float(s)
        acc[1] += float(w)
    out = {"eval_loss": total / max(count, 1.0), "eval_tokens": int(tokens)}
    out.update({f"eval_{k}": s / w for k, (s, w) in sums.items() if w > 0})
    return out

  return evaluate
