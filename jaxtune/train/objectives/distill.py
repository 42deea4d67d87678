"""Logit distillation: the student learns the teacher's next-token distribution on the trained tokens.

Per trained target position, with student logits s and teacher logits t over the shared vocabulary, both
softened by the temperature T (p = softmax(t / T), q = softmax(s / T)):

  forward_kl   KL(p || q) = sum p (log p - log q)        (the teacher's modes and tails: Hinton et al.)
  reverse_kl   KL(q || p) = sum q (log q - log p)        (mode seeking)
  jsd          (KL(p || m) + KL(q || m)) / 2, m = (p + q) / 2

times T^2 (so gradients keep their scale across temperatures), mixed with the hard-label cross-entropy:
loss = alpha * CE + (1 - alpha) * divergence, summed over the trained targets and divided by their number in
the global batch, as the SFT loss. The divergence runs over the first V_teacher ids (the student's
vocabulary may be padded larger: its extra rows are left out and its distribution renormalised over the
shared ids); the cross-entropy over the student's whole vocabulary.

The teacher (`distill.teacher`) runs frozen in the step, its params sharded by the same rules, stored in
the compute dtype, without optimizer state. Its hidden states are computed once per micro-batch; both
models' logits are projected `train.loss_chunk` (default 256) positions at a time inside a rematerialised
scan, so neither model's [rows, seq, vocab] float32 logits is ever held. Teacher and student must share the
tokenizer's vocabulary: a token with another id is an error naming it. eval_loss is the hard-label loss,
eval_kl the divergence beside it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune.errors import CheckpointError
from jaxtune.train import loss as loss_lib
from jaxtune.train.objectives.base import Objective, Policy, PrepareContext

log = logging.getLogger(__name__)
DEFAULT_CHUNK = 256


def divergence(student_BxCxV: jax.Array, teacher_BxCxV: jax.Array, kind: str, temperature: float) -> jax.Array:
  """[B, C] divergence per position (times temperature^2) between softened distributions over the last axis."""
  log_q = jax.nn.log_softmax(student_BxCxV / temperature, axis=-1)
  log_p = jax.nn.log_softmax(teacher_BxCxV / temperature, axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  if kind == "forward_kl":
    d = (p * (log_p - log_q)).sum(-1)
  elif kind == "reverse_kl":
    d = (q * (log_q - log_p)).sum(-1)
  elif kind == "jsd":
    log_m = jnp.log(0.5 * (p + q) + 1e-30)
    d = 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
  else:
    raise ValueError(f"unknown divergence {kind!r}")
  return d * temperature**2


def check_vocab(student_tok, teacher_tok, student_vocab: int, teacher_vocab: int, teacher: str) -> None:
  """The same ids for the same tokens, and the student's model vocabulary at least the teacher's."""
  sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
  for token, i in sorted(tv.items(), key=lambda kv: kv[1]):
    if sv.get(token) != i:
      got = "absent" if token not in sv else f"id {sv[token]}"
      raise CheckpointError(f"distill.teacher {teacher!r}: the student's tokenizer gives token {token!r} {got}, the "
                            f"teacher's id {i}: teacher and student must share the vocabulary")
  extra = sorted(set(sv) - set(tv), key=sv.get)
  if extra:
    raise CheckpointError(f"distill.teacher {teacher!r}: the student's tokenizer has {len(extra)} token(s) the "
                          f"teacher lacks, first {extra[0]!r} (id {sv[extra[0]]})")
  if teacher_vocab > student_vocab:
    raise CheckpointError(f"distill.teacher {teacher!r}: its vocabulary has {teacher_vocab} rows, more than the "
                          f"student's {student_vocab}")


@dataclasses.dataclass(frozen=True)
class Distill(Objective):
  name: ClassVar[str] = "distill"
  temperature: float = 1.0
  alpha: float = 0.0
  kind: str = "forward_kl"
  chunk: int = DEFAULT_CHUNK
  teacher_graphdef: Any = None  # set by prepare
  teacher_vocab: int = 0

  @classmethod
  def from_config(cls, cfg) -> "Distill":
    d = cfg.distill
    return cls(temperature=d.temperature, alpha=d.alpha, kind=d.divergence,
               chunk=cfg.train.loss_chunk or DEFAULT_CHUNK)

  @property
  def has_frozen(self) -> bool:
    return True

  def pipeline(self, cfg, tokenizer, split: str = "train"):
    from jaxtune.data.pipeline import build_pipeline
    return build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.train.seed, split=split)

  def prepare(self, ctx: PrepareContext) -> tuple["Distill", Any]:
    from jaxtune.config import compute_dtype
    from jaxtune.data.chat import load_tokenizer
    from jaxtune.weights.hf_load import load_pretrained, resolve_model_dir
    cfg = ctx.cfg
    teacher_dir = str(resolve_model_dir(cfg.distill.teacher))
    dtype = compute_dtype(cfg.model.dtype)
    teacher = load_pretrained(teacher_dir, dtype=dtype, param_dtype=dtype, mesh=ctx.mesh, remat=cfg.model.remat,
                              attention_impl=cfg.model.attention)
    check_vocab(ctx.tokenizer, load_tokenizer(teacher_dir, cfg.data.chat_template), ctx.model.config.vocab_size,
                teacher.config.vocab_size, cfg.distill.teacher)
    graphdef, params = nnx.split(teacher)
    log.info("distillation teacher %s: %.1fM parameters in %s", cfg.distill.teacher,
             sum(x.size for x in jax.tree.leaves(params)) / 1e6, jnp.dtype(dtype).name)
    return dataclasses.replace(self, teacher_graphdef=graphdef, teacher_vocab=teacher.config.vocab_size), params

  def totals(self, batch):
    return {"count": loss_lib.count_loss_tokens(batch)}

  def _sums(self, policy: Policy, batch, frozen):
    """(hard-label NLL sum, divergence sum) over the trained targets."""
    teacher = nnx.merge(self.teacher_graphdef, frozen)
    t_BxTxD = jax.lax.stop_gradient(teacher.hidden_states(batch["input_ids"], positions=batch["positions"],
                                                          segment_ids=batch["segment_ids"]))
    v = self.teacher_vocab

    def reduce(logits_BxCxV, y_BxC, w_BxC, t_BxCxD):
      t_logits = jax.lax.stop_gradient(teacher.logits_from_hidden(t_BxCxD).astype(jnp.float32))
      nll = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, y_BxC)
      div = divergence(logits_BxCxV[..., :v], t_logits[..., :v], self.kind, self.temperature)
      return jnp.stack([(nll * w_BxC).sum(), (div * w_BxC).sum()])

    chunk = min(self.chunk, batch["input_ids"].shape[1] - 1)
    sums, _ = loss_lib.chunked_sum(policy(), batch, chunk, reduce, jnp.zeros((2,), jnp.float32), (t_BxTxD[:, :-1],))
    return sums[0], sums[1]

  def loss(self, policy: Policy, batch, frozen, totals):
    nll, div = self._sums(policy, batch, frozen)
    n = totals["count"]
    return self.alpha * nll + (1.0 - self.alpha) * div, {"kl": (div, n), "ce": (nll, n)}

  def eval_loss(self, policy: Policy, batch, frozen, totals):
    nll, div = self._sums(policy, batch, frozen)
    return nll, {"kl": (div, totals["count"])}
