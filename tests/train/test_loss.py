"""The losses of jaxtune.train.loss: the masked next-token loss on hand-aligned arrays, packed rows equal to
unpacked ones through a model, and the chunked cross-entropy equal to the full one with far less memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtune.data.chat import tokenize_messages
from jaxtune.data.packing import pack_rows
from jaxtune.models import ModelConfig, build_model
from jaxtune.train import loss as loss_lib
from tests.helpers.tokenizers import make_tokenizer
from tests.train.test_step import CFG, packed_batch


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


CONVS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 12 + 30."},
     {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 1 + 1?"},
     {"role": "assistant", "content": "2"}],
    [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello! Hi there."}],
    [{"role": "user", "content": "Sort 3 1 2."}, {"role": "assistant", "content": "1 2 3"}],
]


def per_example_nll(model, rows) -> dict[bytes, float]:
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  logits = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  nll = -np.asarray(loss_lib.token_logprobs(logits, batch["input_ids"]) * loss_lib.target_weights(batch))
  seg = rows["segment_ids"]
  out = {}
  for r in range(seg.shape[0]):
    for s in np.unique(seg[r][seg[r] > 0]):
      sel = seg[r] == s
      key = rows["input_ids"][r][sel].tobytes()
      # nll[t] belongs to target t+1, which is in segment s iff seg[t+1] == s.
      out[key] = float(nll[r][sel[1:]].sum())
  return out


def test_packed_equals_unpacked_per_example(tmp_path):
  _, tok = make_tokenizer(str(tmp_path), template="llama3")
  examples = [tokenize_messages(c, tok) for c in CONVS]
  cfg = ModelConfig(family="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=256)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  seq_len = 2 * max(len(ids) for ids, _ in examples)
  packed = pack_rows(examples, seq_len, packing=True)
  unpacked = pack_rows(examples, seq_len, packing=False)
  assert packed["segment_ids"].shape[0] < len(examples)  # something really was packed
  a, b = per_example_nll(model, packed), per_example_nll(model, unpacked)
  assert a.keys() == b.keys() and len(a) == len(examples)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
    assert a[k] > 0


def loss_and_grad(model, chunk):
  graphdef, params = nnx.split(model)

  def f(p, batch):
    s, n = loss_lib.model_xent(nnx.merge(graphdef, p), batch, chunk)
    return s / n

  return jax.jit(jax.value_and_grad(f)), params


def test_chunked_equals_full():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  batch = {k: jnp.asarray(v) for k, v in packed_batch(3).items()}
  full, params = loss_and_grad(model, 0)
  chunked, _ = loss_and_grad(model, 7)  # 31 targets: 5 chunks, the last one padded
  (l0, g0), (l1, g1) = full(params, batch), chunked(params, batch)
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_chunked_saves_memory():
  """Compiled temp memory with a 32k vocabulary over 1024 positions: chunks of 128 need a fraction."""
  cfg = dataclasses.replace(CFG, vocab_size=32768, num_layers=1, layer_types=None, max_position_embeddings=1024)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch = {k: jax.ShapeDtypeStruct((2, 1024), jnp.int32) for k in ("input_ids", "segment_ids", "positions", "loss_mask")}
  temp = {}
  for chunk in (0, 128):
    fn, params = loss_and_grad(model, chunk)
    temp[chunk] = fn.lower(params, batch).compile().memory_analysis().temp_size_in_bytes
  full_logits = 2 * 1024 * 32768 * 4
  print(f"temp bytes: full {temp[0] / 2**20:.0f} MiB, chunked {temp[128] / 2**20:.0f} MiB "
        f"(one float32 logits tensor: {full_logits / 2**20:.0f} MiB)")
  assert temp[0] >= full_logits
  assert temp[128] < temp[0] / 4
