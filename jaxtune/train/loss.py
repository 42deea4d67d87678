"""Masked next-token cross-entropy over packed rows.

Batches carry `loss_mask[b, t] == 1` when token `input_ids[b, t]` is a trained
target; the prediction for it comes from position t-1 of the same segment. The
loss returns a (sum, count) pair so that callers normalise by the *global*
number of loss tokens (across devices and accumulation micro-steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def target_weights(batch) -> jax.Array:
  """[B, T-1] float32: 1 where position t predicts a trained token t+1 of its own segment."""
  seg_BxT = batch["segment_ids"]
  same_BxTm1 = (seg_BxT[:, 1:] == seg_BxT[:, :-1]) & (seg_BxT[:, 1:] > 0)
  return (batch["loss_mask"][:, 1:] > 0).astype(jnp.float32) * same_BxTm1.astype(jnp.float32)


def count_loss_tokens(batch) -> jax.Array:
  return target_weights(batch).sum()


def token_logprobs(logits_BxTxV: jax.Array, input_ids_BxT: jax.Array) -> jax.Array:
  """[B, T-1] log p(input_ids[t+1] | prefix) in float32."""
  logits = logits_BxTxV[:, :-1].astype(jnp.float32)
  return -optax.softmax_cross_entropy_with_integer_labels(logits, input_ids_BxT[:, 1:])


def masked_xent(logits_BxTxV: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
  """(sum of token NLLs over trained targets, number of trained targets)."""
  w_BxTm1 = target_weights(batch)
  nll_BxTm1 = -token_logprobs(logits_BxTxV, batch["input_ids"])
  return (nll_BxTm1 * w_BxTm1).sum(), w_BxTm1.sum()
