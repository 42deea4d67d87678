"""The masked next-token loss on hand-aligned arrays."""

import jax.numpy as jnp
import numpy as np
import optax

from jaxtune.train import loss as loss_lib


def _batch():
  # Row 0: two packed examples [a0 a1 a2 | b0 b1] then padding.
  # Row 1: one example, then padding.
  return {
      "input_ids": jnp.array([[5, 6, 7, 8, 9, 0, 0], [1, 2, 3, 4, 0, 0, 0]], jnp.int32),
      "segment_ids": jnp.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 0, 0, 0]], jnp.int32),
      "positions": jnp.array([[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 0, 0, 0]], jnp.int32),
      # loss_mask[t] == 1: token t is a trained target. b0 is marked to show that a
      # segment's first token is never a target (nothing in its segment predicts it).
      "loss_mask": jnp.array([[0, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]], jnp.int32),
  }


def test_target_weights_hand_aligned():
  w = loss_lib.target_weights(_batch())
  # position t predicts token t+1: row 0 targets a1, a2, b1 (b0 crosses a segment; pad excluded);
  # row 1 targets tokens 2, 3 (token 4 is padding even though its mask bit is set).
  np.testing.assert_array_equal(np.asarray(w), [[1, 1, 0, 1, 0, 0], [0, 1, 1, 0, 0, 0]])
  assert float(loss_lib.count_loss_tokens(_batch())) == 5.0


def test_masked_xent_matches_manual():
  batch = _batch()
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 11)), jnp.float32)
  s, n = loss_lib.masked_xent(logits, batch)
  manual = 0.0
  for b, t in [(0, 0), (0, 1), (0, 3), (1, 1), (1, 2)]:  # (row, predicting position)
    manual += float(optax.softmax_cross_entropy_with_integer_labels(logits[b, t], batch["input_ids"][b, t + 1]))
  np.testing.assert_allclose(float(s), manual, rtol=1e-6)
  assert float(n) == 5.0
