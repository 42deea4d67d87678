"""The Optax optimizer and learning-rate schedule from `OptimCfg`."""

from __future__ import annotations

import jax
import optax

from jaxtune.config import OptimCfg


def make_schedule(cfg: OptimCfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine/linear decay to `lr * min_lr_ratio` (or constant)."""
  warmup = max(0, min(cfg.warmup_steps, total_steps))
  decay_steps = max(1, total_steps - warmup)
  end = cfg.lr * cfg.min_lr_ratio
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(cfg.lr, end, decay_steps)
  else:
    after = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def _decay_mask(params):
  """Weight decay on matrices (kernels, embeddings) only, never on norms or biases."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimCfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.clip_norm and cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule
