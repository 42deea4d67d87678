"""resize_vocab: tokens a chat template adds grow the embeddings; old logits unchanged, new rows the mean."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtune import mesh as mesh_lib
from jaxtune.data import chat, templates
from jaxtune.models.resize import resize_vocab
from jaxtune.weights import load_pretrained, save_pretrained
from tests.helpers.hf_models import cached_tiny_hf, hf_logits, rel_err
from tests.helpers.tokenizers import make_tokenizer


@pytest.fixture(scope="module")
def base_tok(tmp_path_factory):
  """A chatml-special-token tokenizer; with data.chat_template="llama3" it lacks 4 tokens."""
  path, _ = make_tokenizer(str(tmp_path_factory.mktemp("tok")), "chatml")
  return path


def _mesh():
  return mesh_lib.make_mesh(2, 2, 2, devices=jax.devices()[:8])


def _logits(model, ids, mesh):
  with jax.set_mesh(mesh):
    return np.asarray(model(jnp.asarray(ids, jnp.int32)))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_resize_for_added_template_tokens(base_tok, tie, tmp_path):
  old_tok = chat.load_tokenizer(base_tok)
  V = len(old_tok)
  src, _ = cached_tiny_hf("llama", tie=tie, vocab_size=V)
  tok = chat.load_tokenizer(base_tok, "llama3")
  added = tok.jaxtune_added_tokens
  assert list(added) == ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
  assert sorted(added.values()) == list(range(V, V + 4)) and len(tok) == V + 4

  mesh = _mesh()
  model = load_pretrained(src, mesh=mesh)
  emb_var = model.model.embed_tokens.embedding
  old_emb = np.asarray(emb_var[...])
  old_axes = emb_var.get_metadata()["logical_axes"]
  ids = np.random.RandomState(0).randint(0, V, (4, 16))
  before = _logits(model, ids, mesh)

  assert resize_vocab(model, len(tok)) == V + 4
  assert model.config.vocab_size == V + 4 and model.hf_config["vocab_size"] == V + 4
  params = [model.model.embed_tokens.embedding] + ([] if tie else [model.lm_head.kernel])
  for var in params:
    axes = var.get_metadata()["logical_axes"]
    value = var.get_value()
    sh = value.sharding
    assert isinstance(sh, NamedSharding) and sh == mesh_lib.sharding_for(axes, value.shape, mesh)
    if (V + 4) % 2 == 0:
      assert sh.spec == (P("tensor", "fsdp") if axes == ("vocab", "embed") else P("fsdp", "tensor"))
  assert model.model.embed_tokens.embedding.get_metadata()["logical_axes"] == old_axes
  emb = np.asarray(model.model.embed_tokens.embedding[...])
  np.testing.assert_array_equal(emb[:V], old_emb)
  np.testing.assert_allclose(emb[V:], np.broadcast_to(old_emb.mean(0), (4, old_emb.shape[1])), rtol=1e-6,
                             atol=1e-7)
  if not tie:
    head = np.asarray(model.lm_head.kernel[...])
    np.testing.assert_allclose(head[:, V:], np.repeat(head[:, :V].mean(1, keepdims=True), 4, 1), atol=1e-7)

  after = _logits(model, ids, mesh)
  assert after.shape == before.shape[:2] + (V + 4,)
  scale = np.abs(before).max()
  np.testing.assert_allclose(after[..., :V], before, rtol=0, atol=1e-5 * scale)  # old tokens unchanged
  mean_logit = np.repeat(before.mean(-1, keepdims=True), 4, -1)
  np.testing.assert_allclose(after[..., V:], mean_logit, rtol=0, atol=1e-5 * scale)  # new tokens: the mean

  out = save_pretrained(model, tmp_path / "out", tokenizer=tok, source_dir=src)
  assert json.loads((out / "config.json").read_text())["vocab_size"] == V + 4
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
  assert hf.config.vocab_size == V + 4 and hf.get_input_embeddings().weight.shape[0] == V + 4
  new_ids = np.concatenate([ids, np.asarray([sorted(added.values())] * 4)], axis=1)
  assert rel_err(hf_logits(hf, new_ids), _logits(model, new_ids, mesh)) <= 1e-4
  reloaded = transformers.AutoTokenizer.from_pretrained(out)
  assert len(reloaded) == V + 4 and reloaded.eos_token == "<|eot_id|>"
  assert reloaded.encode("<|eot_id|>", add_special_tokens=False) == [added["<|eot_id|>"]]
  assert reloaded.chat_template == templates.LLAMA3


def test_resize_pads_and_never_shrinks():
  src, _ = cached_tiny_hf("llama", tie=False)
  model = load_pretrained(src)
  V = model.config.vocab_size
  assert resize_vocab(model, V - 10) == V and resize_vocab(model, V) == V
  assert model.model.embed_tokens.embedding[...].shape[0] == V
  assert resize_vocab(model, V + 1, pad_to_multiple_of=64) == 192
  assert model.lm_head.kernel[...].shape == (model.config.hidden_size, 192)
  assert model.config.vocab_size == 192 and model.hf_config["vocab_size"] == 192
  ids = jnp.asarray(np.arange(8)[None], jnp.int32)
  assert model(ids).shape == (1, 8, 192)
