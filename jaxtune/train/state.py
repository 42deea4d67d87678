"""The train state: a pytree of (step, trainable params, optimizer state, the rest).

The model's graph definition stays outside the state (static); the jitted step
merges it back with the params. Optimizer state is created by a jitted
`tx.init`, so its moments inherit the params' shardings and are never
materialised on one device.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State  # trainable nnx.Param variables
  opt_state: Any
  rest: nnx.State  # everything else the model holds (not trained, not saved)


def trainable_filter(model: nnx.Module):
  """LoRA adapters when the model has them (the base is then frozen), else every nnx.Param."""
  from jaxtune.models.lora import has_lora
  return nnx.LoRAParam if has_lora(model) else nnx.Param


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  graphdef, params, rest = nnx.split(model, trainable_filter(model), ...)
  return graphdef, params, rest


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  """Splits a (possibly sharded) model into trainable params and the frozen rest, and creates
  the optimizer state beside the trainable params only."""
  graphdef, params, rest = split_model(model)
  opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(tx, params))(params)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rest=rest)


def opt_state_shardings(tx: optax.GradientTransformation, params: nnx.State):
  """Moments placed exactly like the params they track; scalars (counts) replicated."""
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  first = jax.tree.leaves(param_sh)[0]
  replicated = NamedSharding(first.mesh, P()) if isinstance(first, NamedSharding) else first
  return optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, params), param_sh,
                               transform_non_params=lambda _: replicated)


def state_shardings(state: TrainState) -> TrainState:
  """The concrete shardings of a state, for the step's in/out shardings."""
  return jax.tree.map(lambda x: x.sharding, state)


def abstract_state(state: TrainState) -> TrainState:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def param_count(params: nnx.State) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
