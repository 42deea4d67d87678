"""The pure train and eval steps: `train_step(state, batch) -> (state, metrics)`.

Gradient accumulation splits the batch into `grad_accum` micro-batches scanned
in sequence; each micro-batch's loss is divided by the loss-token count of the
*whole* batch, so K micro-steps give the same update as one full batch.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune.train import loss as loss_lib
from jaxtune.train.state import TrainState

Batch = dict[str, jax.Array]


def _loss_and_grad(graphdef, params, rest, micro: Batch, n_total: jax.Array, loss_chunk: int = 0):
  def loss_fn(p):
    s, n = loss_lib.model_xent(nnx.merge(graphdef, p, rest), micro, loss_chunk)
    return s / n_total, (s, n)

  (_, (s, n)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return s, n, grads


def train_step(state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum: int = 1, skip_nonfinite: bool = False,
               loss_chunk: int = 0) -> tuple[TrainState, dict[str, jax.Array]]:
  n_total = loss_lib.count_loss_tokens(batch)
  denom = jnp.maximum(n_total, 1.0)
  if grad_accum == 1:
    loss_sum, n, grads = _loss_and_grad(graphdef, state.params, state.rest, batch, denom, loss_chunk)
  else:
    micro_KxB = jax.tree.map(lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)

    def body(carry, micro):
      s_acc, n_acc, g_acc = carry
      s, n, g = _loss_and_grad(graphdef, state.params, state.rest, micro, denom, loss_chunk)
      return (s_acc + s, n_acc + n, jax.tree.map(jnp.add, g_acc, g)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss_sum, n, grads), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(()), zeros), micro_KxB)

  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
  if skip_nonfinite:  # keep the previous params and moments; the step counter still advances
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  metrics = {
      "loss": loss_sum / denom,
      "loss_tokens": n,
      "grad_norm": grad_norm,
      "lr": schedule(state.step),
      "tokens": (batch["segment_ids"] > 0).sum(),
      "finite": finite,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef, loss_chunk: int = 0) -> dict[str, jax.Array]:
  s, n = loss_lib.model_xent(nnx.merge(graphdef, state.params, state.rest), batch, loss_chunk)
  return {"loss_sum": s, "loss_tokens": n}


def jit_train_step(graphdef, tx, schedule, grad_accum: int, state_shardings, batch_sharding, *,
                   skip_nonfinite: bool = False, loss_chunk: int = 0) -> Callable:
  """`train_step` jitted with shardings and the state donated."""
  fn = functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule, grad_accum=grad_accum,
                         skip_nonfinite=skip_nonfinite, loss_chunk=loss_chunk)
  return jax.jit(fn, in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def jit_eval_step(graphdef, state_shardings, batch_sharding, loss_chunk: int = 0) -> Callable:
  fn = functools.partial(eval_step, graphdef=graphdef, loss_chunk=loss_chunk)
  return jax.jit(fn, in_shardings=(state_shardings, batch_sharding))
