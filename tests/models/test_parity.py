"""float32 logit parity with transformers on tiny random sharded checkpoints."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.models import RopeConfig, build_model
from jaxtune.weights import load_pretrained
from tests.helpers.hf_models import FAMILIES, LLAMA3_ROPE, cached_tiny_hf, hf_logits, packed_batch, rel_err

TOL = 1e-4
T = 40  # longer than the sliding windows (8) of the tiny configs

LLAMA_VARIANTS = {
    "default-untied": dict(tie=False),
    "default-tied": dict(tie=True),
    "llama3-untied": dict(tie=False, rope_parameters=LLAMA3_ROPE),
    "llama3-tied": dict(tie=True, rope_parameters=LLAMA3_ROPE),
}
CASES = [("llama", kw) for kw in LLAMA_VARIANTS.values()] + [(f, {}) for f in FAMILIES if f != "llama"]
IDS = [f"llama-{k}" for k in LLAMA_VARIANTS] + [f for f in FAMILIES if f != "llama"]


@pytest.fixture(scope="module", params=list(zip(CASES, IDS)), ids=IDS)
def pair(request):
  (family, kw), _ = request.param
  path, hf = cached_tiny_hf(family, **kw)
  return load_pretrained(path), hf


def test_logits_match_transformers(pair):
  model, hf = pair
  ids = np.random.RandomState(1).randint(0, model.config.vocab_size, (2, T)).astype(np.int32)
  ref = hf_logits(hf, ids)
  out = model(jnp.asarray(ids))
  assert out.dtype == jnp.float32 and out.shape == ref.shape
  assert rel_err(out, ref) <= TOL


def test_packed_segments_match_separate_runs(pair):
  model, hf = pair
  lengths = [[10, 17, 9], [25, 15]]  # row 0 ends in 4 padding tokens
  ids, pos, seg = packed_batch(lengths, T, model.config.vocab_size, seed=2)
  out = np.asarray(model(jnp.asarray(ids), positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg)))
  for b, row in enumerate(lengths):
    start = 0
    for n in row:
      ref = hf_logits(hf, ids[b:b + 1, start:start + n])[0]
      assert rel_err(out[b, start:start + n], ref) <= TOL, (b, start, n)
      start += n


def test_hidden_states_and_logits_from_hidden(pair):
  model, _ = pair
  ids = jnp.asarray(np.random.RandomState(3).randint(0, model.config.vocab_size, (1, 12)), jnp.int32)
  h = model.hidden_states(ids)
  assert h.shape == (1, 12, model.config.hidden_size)
  np.testing.assert_array_equal(np.asarray(model.logits_from_hidden(h)), np.asarray(model(ids)))


def test_llama3_rope_scaling_matters():
  """Guards the parity test: the same weights with plain RoPE must miss the reference."""
  path, hf = cached_tiny_hf("llama", tie=False, rope_parameters=LLAMA3_ROPE)
  model = load_pretrained(path)
  plain = nnx.eval_shape(lambda: build_model(dataclasses.replace(model.config, rope=RopeConfig(theta=10000.0)),
                                             rngs=nnx.Rngs(0)))
  nnx.update(plain, nnx.state(model))
  ids = np.random.RandomState(4).randint(0, model.config.vocab_size, (1, T)).astype(np.int32)
  assert rel_err(plain(jnp.asarray(ids)), hf_logits(hf, ids)) > 10 * TOL
