"""The pure train and eval steps: `train_step(state, batch[, frozen]) -> (state, metrics)`.

What is optimised comes from the objective (`jaxtune.train.objectives`): its loss of a
(micro-)batch as a sum, and the counts over the *whole* batch (`totals`) that sum is divided by.
Gradient accumulation splits the batch into `grad_accum` micro-batches scanned in
sequence, each divided by the whole batch's count, so K micro-steps give the same
update as one full batch. `frozen` (a reference's or a teacher's params) is passed
beside the batch, sharded, never donated and never differentiated.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune.train import loss as loss_lib
from jaxtune.train.objectives.base import Objective, Policy, add_metrics, metric_values, zero_metrics
from jaxtune.train.objectives.sft import SFT
from jaxtune.train.state import TrainState

Batch = dict[str, jax.Array]


def _loss_and_grad(objective: Objective, graphdef, params, rest, micro: Batch, frozen, totals, denom: jax.Array):
  def loss_fn(p):
    s, metrics = objective.loss(Policy(graphdef, p, rest), micro, frozen, totals)
    return s / denom, (s, metrics)

  (_, (s, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return s, metrics, grads


def train_step(state: TrainState, batch: Batch, frozen: Any = None, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule, objective: Objective,
               grad_accum: int = 1, skip_nonfinite: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  totals = objective.totals(batch)
  denom = jnp.maximum(totals["count"], 1.0)
  if grad_accum == 1:
    loss_sum, sums, grads = _loss_and_grad(objective, graphdef, state.params, state.rest, batch, frozen, totals,
                                           denom)
  else:
    micro_KxB = jax.tree.map(lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)
    first = jax.tree.map(lambda x: x[0], micro_KxB)
    like = jax.eval_shape(lambda: objective.loss(Policy(graphdef, state.params, state.rest), first, frozen,
                                                 totals)[1])

    def body(carry, micro):
      s_acc, m_acc, g_acc = carry
      s, m, g = _loss_and_grad(objective, graphdef, state.params, state.rest, micro, frozen, totals, denom)
      return (s_acc + s, add_metrics(m_acc, m), jax.tree.map(jnp.add, g_acc, g)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (jnp.zeros((), jnp.float32), zero_metrics(like), zeros)
    (loss_sum, sums, grads), _ = jax.lax.scan(body, init, micro_KxB)

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
  if skip_nonfinite:  # keep the previous params and moments; the step counter still advances
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  metrics = {
      "loss": loss_sum / denom,
      "loss_tokens": loss_lib.count_loss_tokens(batch),
      "grad_norm": grad_norm,
      "lr": schedule(state.step),
      "tokens": (batch["segment_ids"] > 0).sum(),
      "finite": finite,
      **metric_values(sums),
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, frozen: Any = None, *, graphdef: nnx.GraphDef,
              objective: Objective) -> dict[str, Any]:
  """Sums over one held-out batch: the loss, its count, the trained tokens and the objective's metrics."""
  totals = objective.totals(batch)
  s, sums = objective.eval_loss(Policy(graphdef, state.params, state.rest), batch, frozen, totals)
  return {"loss_sum": s, "count": totals["count"], "loss_tokens": loss_lib.count_loss_tokens(batch),
          "metrics": sums}


def _jit(fn, objective: Objective, state_shardings, batch_sharding, frozen_shardings, **jit_kw) -> Callable:
  """`fn(state, batch, frozen)` jitted; objectives without frozen models get `fn(state, batch)`."""
  if objective.has_frozen:
    return jax.jit(fn, in_shardings=(state_shardings, batch_sharding, frozen_shardings), **jit_kw)
  return jax.jit(lambda state, batch: fn(state, batch, None), in_shardings=(state_shardings, batch_sharding),
                 **jit_kw)


def jit_train_step(graphdef, tx, schedule, grad_accum: int, state_shardings, batch_sharding, *,
                   skip_nonfinite: bool = False, loss_chunk: int = 0, objective: Objective | None = None,
                   frozen_shardings: Any = None) -> Callable:
  """`train_step` jitted with shardings and the state donated (SFT with `loss_chunk` by default)."""
  objective = objective if objective is not None else SFT(loss_chunk=loss_chunk)
  fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, objective=objective,
                         grad_accum=grad_accum, skip_nonfinite=skip_nonfinite)
  return _jit(fn, objective, state_shardings, batch_sharding, frozen_shardings,
              out_shardings=(state_shardings, None), donate_argnums=(0,))


def jit_eval_step(graphdef, state_shardings, batch_sharding, *, objective: Objective,
                  frozen_shardings: Any = None) -> Callable:
  fn = functools.partial(eval_step, graphdef=graphdef, objective=objective)
  return _jit(fn, objective, state_shardings, batch_sharding, frozen_shardings)
