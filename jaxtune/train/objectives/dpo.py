"""Preference tuning: DPO and its relatives on packed preference pairs.

Data (jaxtune.data.preference): each pair is two sequences, chosen then rejected,
in consecutive segments of one row (packed) or in two consecutive rows (unpacked).
The batch carries `seq_ids` [rows, S]: the stored sequence of each segment slot
(-1: empty), so S, the segment slots per row, is static; flattening the per-slot
log-probs [rows, S] and reading them two at a time gives [pairs, 2] in both
layouts. A sequence's log-prob is the sum of its trained tokens' log-probs (the
final reply and its end-of-turn marker).

Losses (`dpo.loss`), per pair, with beta = dpo.beta, policy/reference log-probs
pc, pr / rc, rr of chosen/rejected, and their mean per trained token ac, ar:

  sigmoid  -(1-ls) log s(beta h) - ls log s(-beta h),   h = (pc - rc) - (pr - rr)     (DPO; ls: conservative DPO)
  ipo      ((pc - rc)/nc - (pr - rr)/nr - 1/(2 beta))^2  (IPO per trained token, as TRL computes it)
  hinge    max(0, 1 - beta h)                                                        (SLiC)
  simpo    -(1-ls) log s(beta (ac - ar) - gamma) - ls log s(-...)                     (reference-free)
  orpo     NLL(chosen) - beta log s(log odds(ac) - log odds(ar)), odds(a) = e^a / (1 - e^a)  (reference-free)

`dpo.sft_weight` adds that weight times the chosen replies' NLL per chosen token.
The loss is averaged over the pairs of the global batch (`totals["count"]`); the NLL
terms are normalised by the chosen tokens of the global batch. Rewards and logps
metrics follow TRL: beta x (policy - reference) sequence log-probs, and for the
reference-free losses (TRL's CPO/ORPO trainers) beta x the policy's mean log-probs.

The reference (`dpo.reference`): `cached` log-probs computed once before training
(jaxtune.train.reference) arrive as the batch field `ref_logps`; `live` runs a
frozen reference in the step: a copy of the starting params (full fine-tuning),
or with LoRA the same model with its adapters at zero (the base, no copy).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxtune.errors import ConfigError
from jaxtune.train import loss as loss_lib
from jaxtune.train.objectives.base import TOKEN_FIELDS, Objective, Policy, PrepareContext

REFERENCE_FREE = ("simpo", "orpo")  # losses on the policy's per-token mean log-probs alone


def pair_losses(loss: str, pc, pr, rc, rr, nc, nr, *, beta: float, label_smoothing: float = 0.0,
                simpo_gamma: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss, chosen reward, rejected reward) per pair from sequence log-prob sums (pc, pr: policy; rc, rr:
  reference; nc, nr: trained tokens). The NLL term of ORPO is added by the caller."""
  nc, nr = jnp.maximum(nc, 1.0), jnp.maximum(nr, 1.0)
  ac, ar = pc / nc, pr / nr
  ls = label_smoothing
  if loss in ("sigmoid", "hinge", "ipo"):
    h = (pc - rc) - (pr - rr)
    if loss == "sigmoid":
      per = -(1 - ls) * jax.nn.log_sigmoid(beta * h) - ls * jax.nn.log_sigmoid(-beta * h)
    elif loss == "hinge":
      per = jax.nn.relu(1.0 - beta * h)
    else:  # the log-ratios per trained token
      per = ((pc - rc) / nc - (pr - rr) / nr - 1.0 / (2.0 * beta)) ** 2
    return per, beta * (pc - rc), beta * (pr - rr)
  if loss == "simpo":
    z = beta * (ac - ar) - simpo_gamma
    per = -(1 - ls) * jax.nn.log_sigmoid(z) - ls * jax.nn.log_sigmoid(-z)
    return per, beta * ac, beta * ar
  if loss == "orpo":
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    return -beta * jax.nn.log_sigmoid(log_odds), beta * ac, beta * ar
  raise ValueError(f"unknown preference loss {loss!r}")


def _log1mexp(a):
  """log(1 - exp(a)) for a < 0, stable near 0 and far below it."""
  a = jnp.minimum(a, -1e-7)
  return jnp.where(a > -0.6931, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def pairs(x_BS: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-slot values [rows, S] -> (chosen, rejected) [pairs]: the slots read two at a time."""
  flat = x_BS.reshape(-1, 2)
  return flat[:, 0], flat[:, 1]


@dataclasses.dataclass(frozen=True)
class DPO(Objective):
  name: ClassVar[str] = "dpo"
  loss_type: str = "sigmoid"
  beta: float = 0.1
  label_smoothing: float = 0.0
  simpo_gamma: float = 0.5
  sft_weight: float = 0.0
  reference: str = "cached"  # cached | live | none (reference-free losses)
  lora: bool = False  # the live reference is the base: the adapters at zero
  loss_chunk: int = 0

  @classmethod
  def from_config(cls, cfg) -> "DPO":
    d = cfg.dpo
    reference = "none" if d.loss in REFERENCE_FREE else d.reference
    return cls(loss_type=d.loss, beta=d.beta, label_smoothing=d.label_smoothing, simpo_gamma=d.simpo_gamma,
               sft_weight=d.sft_weight, reference=reference, lora=cfg.lora.rank > 0, loss_chunk=cfg.train.loss_chunk)

  @property
  def fields(self) -> tuple[str, ...]:
    return TOKEN_FIELDS + ("seq_ids",) + (("ref_logps",) if self.reference == "cached" else ())

  @property
  def has_frozen(self) -> bool:
    return self.reference == "live" and not self.lora

  # -- host side -----------------------------------------------------------------------------------------

  def pipeline(self, cfg, tokenizer, split: str = "train"):
    from jaxtune.data.pipeline import build_pipeline
    key = "eval" if split == "eval" and cfg.data.eval else "train"
    bad = [f"data.{key}[{i}].format = {src.format!r}" for i, src in enumerate(getattr(cfg.data, key))
           if src.format not in ("preference", "auto")]
    if bad:
      raise ConfigError(f"train.objective=dpo trains on preference pairs: {'; '.join(bad)} (use 'preference' "
                        "or 'auto')")
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if not cfg.data.packing and micro % 2:
      raise ConfigError(f"config key 'train.batch_size': unpacked DPO puts a pair in two rows, so the micro-batch "
                        f"(train.batch_size / train.grad_accum = {micro}) must be even")
    return build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.train.seed, split=split,
                          preference=True)

  def prepare(self, ctx: PrepareContext) -> tuple["DPO", Any]:
    if self.reference == "cached":
      from jaxtune.train.reference import attach_reference_logps
      attach_reference_logps(ctx, chunk=self.loss_chunk)
      return self, None
    if self.has_frozen:  # the starting params, frozen: their own buffers (the step donates the policy's)
      from flax import nnx
      return self, jax.tree.map(jnp.copy, nnx.state(ctx.model, nnx.Param))
    return self, None

  # -- in the step ---------------------------------------------------------------------------------------

  def totals(self, batch):
    n_BS = loss_lib.segment_token_counts(batch, batch["seq_ids"].shape[1])
    nc, _ = pairs(n_BS)
    valid = (nc > 0).astype(jnp.float32)
    return {"count": valid.sum(), "chosen_tokens": (nc * valid).sum()}

  def _sequence_logps(self, model, batch):
    return loss_lib.sequence_logps(model, batch, batch["seq_ids"].shape[1], self.loss_chunk)

  def _reference_logps(self, policy: Policy, batch, frozen):
    if self.reference == "cached":
      return batch["ref_logps"].astype(jnp.float32)
    if self.reference == "none":
      return None
    params = frozen if frozen is not None else jax.tree.map(jnp.zeros_like, policy.params)  # LoRA: the base
    logp_BS, _ = self._sequence_logps(policy(params), batch)
    return jax.lax.stop_gradient(logp_BS)

  def loss(self, policy: Policy, batch, frozen, totals):
    logp_BS, n_BS = self._sequence_logps(policy(), batch)
    ref_BS = self._reference_logps(policy, batch, frozen)
    pc, pr = pairs(logp_BS)
    nc, nr = pairs(n_BS)
    rc, rr = pairs(ref_BS) if ref_BS is not None else (jnp.zeros_like(pc), jnp.zeros_like(pr))
    valid = (nc > 0).astype(jnp.float32)
    per, rew_c, rew_r = pair_losses(self.loss_type, pc, pr, rc, rr, nc, nr, beta=self.beta,
                                    label_smoothing=self.label_smoothing, simpo_gamma=self.simpo_gamma)
    loss_sum = (per * valid).sum()
    nll_weight = self.sft_weight + (1.0 if self.loss_type == "orpo" else 0.0)
    if nll_weight:  # the chosen replies' NLL per chosen token (global), as a share of the per-pair loss
      nll_c = -(pc * valid).sum()
      loss_sum = loss_sum + nll_weight * nll_c * totals["count"] / jnp.maximum(totals["chosen_tokens"], 1.0)
    mean = self.loss_type in REFERENCE_FREE
    shown_c, shown_r = (pc / jnp.maximum(nc, 1.0), pr / jnp.maximum(nr, 1.0)) if mean else (pc, pr)
    n = valid.sum()
    avg = lambda x: ((x * valid).sum(), n)  # noqa: E731 - a metric as (sum, weight) over the pairs
    metrics = {
        "reward_accuracy": avg((rew_c > rew_r).astype(jnp.float32)),
        "reward_margin": avg(rew_c - rew_r),
        "rewards_chosen": avg(rew_c),
        "rewards_rejected": avg(rew_r),
        "logps_chosen": avg(shown_c),
        "logps_rejected": avg(shown_r),
    }
    return loss_sum, metrics
