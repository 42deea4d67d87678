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

from jaxtune.mesh import constrain, context_size


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


def chunked_masked_xent(model, batch, chunk: int) -> tuple[jax.Array, jax.Array]:
  """`masked_xent` without ever holding full-vocabulary logits: the output projection and
  cross-entropy run over `chunk` positions at a time in a scan, and are recomputed in the
  backward pass, so peak memory holds [B, chunk, V] float32 logits instead of [B, T, V].

  Under context parallelism (the sequence split in C slices across devices) each scan step takes
  `chunk` positions of every slice, so each device computes the logits of its own positions only."""
  ids_BxT = batch["input_ids"]
  h_BxTxD = model.hidden_states(ids_BxT, positions=batch["positions"], segment_ids=batch["segment_ids"])
  b, t = ids_BxT.shape
  c = context_size(jax.sharding.get_abstract_mesh())
  c = c if t % c == 0 else 1
  # every position predicts the next token; the last one predicts nothing (weight 0)
  y_BxT = jnp.pad(ids_BxT[:, 1:], [(0, 0), (0, 1)])
  w_BxT = jnp.pad(target_weights(batch), [(0, 0), (0, 1)])
  n = -(-(t // c) // chunk)
  pad = n * chunk - t // c

  def chunks(x):  # [B, T, ...] -> [n, B, C, chunk, ...]: C slices of the sequence, n chunks of each
    rest = x.shape[2:]
    x = jnp.pad(x.reshape((b, c, t // c) + rest), [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * len(rest))
    x = jnp.moveaxis(x.reshape((b, c, n, chunk) + rest), 2, 0)
    return constrain(x, (None, "batch", "seq") + (None,) * (1 + len(rest)))

  @jax.checkpoint
  def chunk_nll(h_BxCxLxD, y_BxCxL, w_BxCxL):
    h_BxSxD = h_BxCxLxD.reshape(b, c * chunk, h_BxCxLxD.shape[-1])
    logits = model.logits_from_hidden(h_BxSxD).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y_BxCxL.reshape(b, c * chunk))
    return (nll * w_BxCxL.reshape(b, c * chunk)).sum()

  def body(total, xs):
    return total + chunk_nll(*xs), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (chunks(h_BxTxD), chunks(y_BxT), chunks(w_BxT)))
  return total, w_BxT.sum()


def model_xent(model, batch, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """(loss sum, loss-token count) of `model` on `batch`; chunked over the sequence when chunk > 0."""
  if chunk and chunk < batch["input_ids"].shape[1] - 1:
    return chunked_masked_xent(model, batch, chunk)
  logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  return masked_xent(logits, batch)
