"""Packed rows give the same per-example loss through the model as one example per row."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.data.chat import tokenize_messages
from jaxtune.data.packing import pack_rows
from jaxtune.models import ModelConfig, build_model
from jaxtune.train import loss as loss_lib
from tests.helpers.tokenizers import make_tokenizer

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
