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


def chunked_sum(model, batch, chunk: int, reduce, init, extra_BxTm1=()):
  """(the sum over `chunk`-position slices of the targets of reduce(logits_BxCxV, y_BxC, w_BxC, *extra_BxC),
  target weights [B, T-1]), never holding full-vocabulary logits: the output projection runs over `chunk`
  positions at a time in a scan, recomputed in the backward pass, so peak memory holds [B, chunk, V] float32
  logits instead of [B, T, V]. `extra_BxTm1` are further [B, T-1, ...] arrays sliced the same way (a
  teacher's hidden states, segment ids)."""
  ids_BxT = batch["input_ids"]
  h_BxTxD = model.hidden_states(ids_BxT, positions=batch["positions"], segment_ids=batch["segment_ids"])
  w_BxTm1 = target_weights(batch)
  h_BxTm1xD, y_BxTm1 = h_BxTxD[:, :-1], ids_BxT[:, 1:]
  b, t1 = y_BxTm1.shape
  n = -(-t1 // chunk)
  pad = n * chunk - t1

  def chunks(x):  # [B, T-1, ...] -> [n, B, chunk, ...]
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape((b, n, chunk) + x.shape[2:]), 0, 1)

  @jax.checkpoint
  def chunk_sum(h_BxCxD, y_BxC, w_BxC, *extra):
    return reduce(model.logits_from_hidden(h_BxCxD).astype(jnp.float32), y_BxC, w_BxC, *extra)

  def body(total, xs):
    return jax.tree.map(jnp.add, total, chunk_sum(*xs)), None

  xs = (chunks(h_BxTm1xD), chunks(y_BxTm1), chunks(w_BxTm1)) + tuple(chunks(e) for e in extra_BxTm1)
  total, _ = jax.lax.scan(body, init, xs)
  return total, w_BxTm1


def chunked_masked_xent(model, batch, chunk: int) -> tuple[jax.Array, jax.Array]:
  """`masked_xent` without ever holding full-vocabulary logits (see `chunked_sum`)."""
  reduce = lambda logits, y, w: (optax.softmax_cross_entropy_with_integer_labels(logits, y) * w).sum()  # noqa: E731
  total, w_BxTm1 = chunked_sum(model, batch, chunk, reduce, jnp.zeros((), jnp.float32))
  return total, w_BxTm1.sum()


def _target_segments(batch) -> jax.Array:
  """[B, T-1]: the 0-based segment of each target (target t+1's segment id - 1; -1 for padding)."""
  return batch["segment_ids"][:, 1:] - 1


def _per_segment(x_BxN: jax.Array, seg_BxN: jax.Array, num_segments: int) -> jax.Array:
  """[B, num_segments]: per row, the sum of x over each segment (ids outside [0, num_segments) dropped)."""
  return jax.vmap(lambda x, s: jax.ops.segment_sum(x, s, num_segments=num_segments))(x_BxN, seg_BxN)


def segment_token_counts(batch, num_segments: int) -> jax.Array:
  """[B, num_segments] float32: trained targets per segment slot (segment id s is slot s - 1)."""
  return _per_segment(target_weights(batch), _target_segments(batch), num_segments)


def sequence_logps(model, batch, num_segments: int, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """([B, S] sum of log p over each segment's trained targets, [B, S] their counts), S = num_segments: a
  packed row's per-sequence log-probs; chunked over the sequence when chunk > 0."""
  seg_BxTm1 = _target_segments(batch)
  if chunk and chunk < batch["input_ids"].shape[1] - 1:
    def reduce(logits, y, w, seg):
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return _per_segment(-nll * w, seg, num_segments)

    init = jnp.zeros((batch["input_ids"].shape[0], num_segments), jnp.float32)
    logp_BS, w_BxTm1 = chunked_sum(model, batch, chunk, reduce, init, (seg_BxTm1,))
  else:
    logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    w_BxTm1 = target_weights(batch)
    logp_BS = _per_segment(token_logprobs(logits, batch["input_ids"]) * w_BxTm1, seg_BxTm1, num_segments)
  return logp_BS, _per_segment(w_BxTm1, seg_BxTm1, num_segments)


def model_xent(model, batch, chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """(loss sum, loss-token count) of `model` on `batch`; chunked over the sequence when chunk > 0."""
  if chunk and chunk < batch["input_ids"].shape[1] - 1:
    return chunked_masked_xent(model, batch, chunk)
  logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  return masked_xent(logits, batch)
