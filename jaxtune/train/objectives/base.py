"""What a training objective is, as the step and the loop see it.

An objective is one frozen dataclass (its static settings) in one module (SFT, DPO,
distillation) that states

  - `fields`: the batch fields it needs, each a [rows, ...] array whose first axis is the
    batch (so one sharding places every field);
  - `pipeline(cfg, tokenizer, split)`: how examples become its batches (host side);
  - `prepare(ctx) -> (objective, frozen)`: the extra models it needs, as a frozen pytree
    passed to every step beside the batch (a reference's or a teacher's params), or None,
    and the objective itself completed with what it learnt (a teacher's graph); it may
    also fill batch fields computed once before training (cached reference log-probs);
  - `loss(policy, batch, frozen, totals)`: inside jit, the summed loss of a (micro-)batch and
    its metrics as (sum, weight) pairs. `totals(batch)` holds counts over the *global* batch,
    computed before it is split into micro-batches: its "count" is what the summed loss is
    divided by (trained tokens for SFT, pairs for DPO), so K accumulation micro-steps give the
    update of one full batch; other totals let a loss normalise a term by another global count;
  - `eval_loss`: the held-out loss (default: the training loss).

The pure step (`jaxtune.train.step`) and the loop never ask which objective runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

# A metric of a (micro-)batch as (sum, weight): micro-steps and eval batches add both up; the value is
# sum / weight. The loss and the token counts are kept by the step itself.
MetricSums = dict[str, tuple[jax.Array, jax.Array]]
TOKEN_FIELDS = ("input_ids", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class Policy:
  """The model being trained as its static graph and its (traced) trainable params and the rest:
  `policy()` is the model; `policy(other)` the same model with other trainable params of the same
  structure (a frozen reference, or LoRA adapters at zero: the base model)."""
  graphdef: nnx.GraphDef
  params: Any
  rest: Any

  def __call__(self, params: Any = None) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params if params is None else params, self.rest)


@dataclasses.dataclass(frozen=True)
class PrepareContext:
  """What `Objective.prepare` may use: the run's config, the starting model (sharded on `mesh`), the
  tokenizer and the train/eval pipelines (eval None when there is no eval data)."""
  cfg: Any
  model: nnx.Module
  mesh: Any
  tokenizer: Any
  pipelines: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Objective:
  """The interface; see the module docstring. Instances are static (hashable), never traced."""
  name: ClassVar[str] = ""

  @property
  def fields(self) -> tuple[str, ...]:
    """The batch fields the loss reads."""
    return TOKEN_FIELDS

  @property
  def has_frozen(self) -> bool:
    """Whether `prepare` returns a pytree the step takes as a third argument."""
    return False

  def pipeline(self, cfg, tokenizer, split: str = "train"):
    raise NotImplementedError

  def prepare(self, ctx: PrepareContext) -> tuple["Objective", Any]:
    return self, None

  def totals(self, batch) -> dict[str, jax.Array]:
    """Counts over the global batch; "count" divides the summed loss."""
    raise NotImplementedError

  def loss(self, policy: Policy, batch, frozen: Any, totals: dict[str, jax.Array]) -> tuple[jax.Array, MetricSums]:
    raise NotImplementedError

  def eval_loss(self, policy: Policy, batch, frozen: Any, totals: dict[str, jax.Array]
                ) -> tuple[jax.Array, MetricSums]:
    return self.loss(policy, batch, frozen, totals)


def add_metrics(a: MetricSums, b: MetricSums) -> MetricSums:
  return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1]) for k in a}


def zero_metrics(like: MetricSums) -> MetricSums:
  """Zeros of the structure of `like` (arrays or ShapeDtypeStructs)."""
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)


def metric_values(sums: MetricSums, prefix: str = "") -> dict[str, jax.Array]:
  return {prefix + k: s / jnp.maximum(w, 1e-30) for k, (s, w) in sums.items()}
