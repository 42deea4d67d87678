"""Eval loss over a fixed held-out set: every example once, the same batches every time."""

from __future__ import annotations

from typing import Callable

import jax

from jaxtune.train.step import jit_eval_step


def make_evaluator(pipe, graphdef, state_shardings, batch_sharding, loss_chunk: int = 0) -> Callable:
  """`evaluate(state) -> {"eval_loss", "eval_tokens"}` over all of `pipe`'s examples.

  `pipe` holds the whole eval set on every process (global batches); each process
  feeds its own rows, as in training.
  """
  from jaxtune.train.loop import global_batch

  batches = [global_batch(b, batch_sharding) for b in pipe.one_pass()]
  step = jit_eval_step(graphdef, state_shardings, batch_sharding, loss_chunk)

  def evaluate(state) -> dict[str, float]:
    total, count = 0.0, 0.0
    for o in jax.device_get([step(state, b) for b in batches]):
      total += float(o["loss_sum"])
      count += float(o["loss_tokens"])
    return {"eval_loss": total / max(count, 1.0), "eval_tokens": int(count)}

  return evaluate
