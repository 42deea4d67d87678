"""KV-cache decoding: equals a naive token-by-token loop whatever the padding, matches transformers'
greedy `generate` and a full forward pass for every family, and samples reproducibly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import generate as G
from jaxtune.demo.tokenizer import build_tokenizer, vocab_size
from jaxtune.models import ModelConfig, build_model
from jaxtune.weights import load_pretrained
from tests.helpers.hf_models import FAMILIES, cached_tiny_hf, rel_err

CONVS = [
    [{"role": "user", "content": "Reverse: abc"}],
    [{"role": "user", "content": "A much longer prompt, so that the others get padded."}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}],
]


@pytest.fixture(scope="module")
def setup():
  tok = build_tokenizer()
  cfg = ModelConfig(family="llama", vocab_size=vocab_size(), hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, rms_norm_eps=1e-5)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  # Larger random weights than the 0.02 init, so greedy outputs are varied.
  graphdef, state = nnx.split(model)
  leaves, treedef = jax.tree.flatten(state)
  rng = np.random.default_rng(1)
  state = jax.tree.unflatten(treedef, [jnp.asarray(rng.normal(size=x.shape) * 0.5, x.dtype) for x in leaves])
  return nnx.merge(graphdef, state), tok


@nnx.jit
def _forward(model, ids_1xT):
  return model(ids_1xT)


def naive(model, prompt, n, stop, width=96):
  """One row, right-padded to a fixed width (causal: later columns cannot matter)."""
  ids = list(prompt)
  for _ in range(n):
    buf = np.zeros((1, width), np.int32)
    buf[0, :len(ids)] = ids
    t = int(jnp.argmax(_forward(model, jnp.asarray(buf))[0, len(ids) - 1]))
    ids.append(t)
    if t in stop:
      break
  return ids[len(prompt):]


def test_matches_naive_loop_and_ignores_padding(setup):
  model, tok = setup
  prompts = G.encode_prompts(tok, CONVS)
  stop = G.stop_token_ids(tok)
  ref = [naive(model, p, 8, stop) for p in prompts]
  assert len({tuple(r) for r in ref}) == len(ref)  # the test is not vacuous
  batched = G.generate_ids(model, prompts, 8, stop, tok.pad_token_id)
  alone = [G.generate_ids(model, [p], 8, stop, tok.pad_token_id)[0] for p in prompts]
  small_batches = G.generate_ids(model, prompts, 8, stop, tok.pad_token_id, batch_size=2)
  assert batched == ref
  assert alone == ref
  assert small_batches == ref


def test_stops_after_first_stop_token(setup):
  model, tok = setup
  prompts = G.encode_prompts(tok, CONVS)
  full = G.generate_ids(model, prompts, 8, [], tok.pad_token_id)
  stop_tok = full[0][3]
  cut = G.generate_ids(model, prompts, 8, [stop_tok], tok.pad_token_id)
  for f, c in zip(full, cut):
    j = f.index(stop_tok) + 1 if stop_tok in f else len(f)
    assert c == f[:j]


def test_one_compilation_and_text_output(setup):
  model, tok = setup
  G.greedy_generate(model, tok, CONVS, 6)
  n = G._prefill._cache_size(), G._decode_loop._cache_size()
  texts = G.greedy_generate(model, tok, CONVS[::-1], 6)
  G.greedy_generate(model, tok, CONVS[1:], 5)  # other prompt lengths and token budget, same buckets
  assert (G._prefill._cache_size(), G._decode_loop._cache_size()) == n
  prompts = G.encode_prompts(tok, CONVS[::-1])
  ids = G.generate_ids(model, prompts, 6, G.stop_token_ids(tok), tok.pad_token_id)
  assert texts == [tok.decode(i, skip_special_tokens=True) for i in ids]
  assert all("<|" not in t for t in texts)


def test_left_pad_layout():
  ids, seg, pos, done = G.left_pad([[5, 6], [7]], rows=3, length=4, total=6, pad_id=0)
  np.testing.assert_array_equal(ids[:, :4], [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
  np.testing.assert_array_equal(seg[:2], [[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(pos[:2], [[0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 1, 2]])
  np.testing.assert_array_equal(done, [False, False, True])


def test_sampling_reproducible(setup):
  model, tok = setup
  kw = dict(max_new_tokens=8, temperature=1.5, top_p=0.95, top_k=40)
  a = G.generate(model, tok, CONVS, seed=3, **kw)
  b = G.generate(model, tok, CONVS, seed=3, **kw)
  c = G.generate(model, tok, CONVS, seed=4, **kw)
  assert a == b
  assert [o["completion_ids"] for o in a] != [o["completion_ids"] for o in c]
  assert all(o["completion"] == tok.decode(o["completion_ids"], skip_special_tokens=True) for o in a)
  greedy = G.generate(model, tok, CONVS, max_new_tokens=8)
  top1 = G.generate(model, tok, CONVS, max_new_tokens=8, temperature=1.0, top_k=1, seed=5)
  tiny_p = G.generate(model, tok, CONVS, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=5)
  assert top1 == greedy and tiny_p == greedy


def test_a_sampled_row_depends_on_its_sample_id_not_its_batch(setup):
  """Each row draws with its own key from (seed, sample id): the same tokens alone, in any batch or order."""
  model, tok = setup
  prompts = G.encode_prompts(tok, CONVS)
  kw = dict(temperature=1.5, top_p=0.95, seed=3)
  together = G.generate_ids(model, prompts, 8, [], tok.pad_token_id, **kw)
  alone = [G.generate_ids(model, [p], 8, [], tok.pad_token_id, sample_ids=[(i, 0)], **kw)[0]
           for i, p in enumerate(prompts)]
  backwards = G.generate_ids(model, prompts[::-1], 8, [], tok.pad_token_id, batch_size=2,
                             sample_ids=[(i, 0) for i in reversed(range(len(prompts)))], **kw)[::-1]
  assert together == alone == backwards
  same_prompt = G.generate_ids(model, [prompts[0]] * 4, 8, [], tok.pad_token_id,
                               sample_ids=[(0, 0), (0, 1), (0, 2), (0, 3)], **kw)
  assert same_prompt[0] == together[0] and len({tuple(x) for x in same_prompt}) == 4


def test_sample_tokens_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2048))
  sample = jax.jit(G.sample_tokens)
  draw = lambda top_p=1.0, top_k=0: set(np.asarray(
      sample(logits, jax.random.PRNGKey(0), jnp.float32(1.0), jnp.float32(top_p), jnp.int32(top_k))).tolist())
  assert draw(top_k=2) == {0, 1}
  assert draw(top_p=0.7) == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
  assert draw() == {0, 1, 2, 3}


# -- every family against transformers ---------------------------------------------------------------------------

PROMPTS = [[5, 17, 33, 9, 101, 44, 12, 7, 150, 63, 28, 91, 3], [8, 140, 66, 21, 9]]  # 13 > sliding window 8
NEW = 12


def _hf_greedy(hf, prompt, n, eos):
  """transformers' greedy continuation of one prompt, cut after the first eos (an id, a list of ids or None)."""
  import torch
  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, max_new_tokens=n, pad_token_id=0, eos_token_id=eos)
  return G._cut(out[0, len(prompt):].tolist(), eos if isinstance(eos, list) else [eos])


def _jit_decode(graphdef):
  @jax.jit
  def f(state, ids, pos, seg, cache, index):
    return nnx.merge(graphdef, state).decode(ids, pos, cache, index, segment_ids=seg)
  return f


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_hf_generate_and_full_forward(family):
  path, hf = cached_tiny_hf(family)
  model = load_pretrained(path)
  eos = hf.config.eos_token_id
  ours = G.generate_ids(model, PROMPTS, NEW, [eos], 0)
  ref = [_hf_greedy(hf, p, NEW, eos) for p in PROMPTS]
  assert ours == ref
  assert max(len(p) + len(o) for p, o in zip(PROMPTS, ours)) > 2 * model.config.sliding_window if \
      model.config.sliding_window else True

  _check_cached_logits(model, ours, NEW, family)


def _check_cached_logits(model, outs, new, family, blocks=(1,)):
  """Cached logits at every generated position (teacher-forced with the generated tokens, left-padded batch,
  fed in blocks of the sizes `blocks` cycles through) equal the full forward pass of each row alone.
  Returns the final cache."""
  graphdef, state = nnx.split(model)
  step = _jit_decode(graphdef)
  L = 16
  ids, seg, pos, _ = G.left_pad(PROMPTS, 2, L, L, 0)
  cache = model.init_cache(2, L + new)
  logits, cache = step(state, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(seg), cache, 0)
  got = [[np.asarray(logits[b, -1])] for b in range(2)]
  gen = np.zeros((2, new), np.int32)
  for b, o in enumerate(outs):
    gen[b, :len(o)] = o
  i, n = 0, 0
  while i < new - 1:
    t = min(blocks[n % len(blocks)], new - 1 - i)
    logits, cache = step(state, jnp.asarray(gen[:, i:i + t]), jnp.asarray(pos[:, -1:] + 1 + i + np.arange(t)),
                         jnp.ones((2, t), jnp.int32), cache, L + i)
    for b in range(2):
      got[b].extend(np.asarray(logits[b]))
    i, n = i + t, n + 1
  for b, p in enumerate(PROMPTS):
    full = np.asarray(model(jnp.asarray([list(p) + gen[b].tolist()]))[0])
    ref_b = full[len(p) - 1:len(p) - 1 + new]
    assert rel_err(np.stack(got[b]), ref_b) < 1e-4, family
  return cache


SLIDING_FAMILIES = ("mistral", "qwen2", "gemma2", "gemma3")
NEW_LONG = 40  # prompts of 13 and 5 tokens + 40 > 3 x the window of 8


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_sliding_layers_keep_a_window_sized_ring(family):
  path, hf = cached_tiny_hf(family)
  model = load_pretrained(path)
  cfg = model.config
  W = cfg.sliding_window
  sliding = [i for i in range(cfg.num_layers) if cfg.window(i)]
  assert W == 8 and sliding
  assert min(len(p) for p in PROMPTS) + NEW_LONG > 3 * W
  ours = G.generate_ids(model, PROMPTS, NEW_LONG, [], 0)  # no stop ids: exactly NEW_LONG tokens each
  assert [len(o) for o in ours] == [NEW_LONG] * len(PROMPTS)
  assert ours == [_hf_greedy(hf, p, NEW_LONG, None) for p in PROMPTS]
  # Blocks of 1 to 10 tokens: multi-token writes that wrap around the ring, and one longer than it.
  cache = _check_cached_logits(model, ours, NEW_LONG, family, blocks=(1, 3, 10))
  S = 16 + NEW_LONG
  for i in range(cfg.num_layers):
    want = (2, cfg.num_kv_heads, W if i in sliding else S, cfg.head_dim)
    assert cache["k"][i].shape == want and cache["v"][i].shape == want, (family, i)
  assert cache["ring_positions"].shape == cache["ring_segment_ids"].shape == (2, W)
  assert cache["positions"].shape == (2, S)


def test_ring_write_wraps_and_keeps_the_last_columns():
  from jaxtune.models.attention import cache_write
  buf = jnp.zeros((1, 4), jnp.int32)
  buf = cache_write(buf, jnp.asarray([[1, 2, 3]]), 0, ring=True)
  np.testing.assert_array_equal(buf, [[1, 2, 3, 0]])
  buf = cache_write(buf, jnp.asarray([[4, 5, 6]]), 3, ring=True)  # columns 3, 4, 5 -> slots 3, 0, 1
  np.testing.assert_array_equal(buf, [[5, 6, 3, 4]])
  buf = cache_write(buf, jnp.asarray([[7]]), 6, ring=True)
  np.testing.assert_array_equal(buf, [[5, 6, 7, 4]])
  buf = cache_write(buf, jnp.asarray([[10, 11, 12, 13, 14, 15]]), 7, ring=True)  # columns 9..12 -> slots 1, 2, 3, 0
  np.testing.assert_array_equal(buf, [[15, 12, 13, 14]])


def test_sharded_generation_matches_one_device():
  from jaxtune import mesh as mesh_lib
  from jaxtune.models.transformer import CausalLM
  path, _ = cached_tiny_hf("gemma3")  # sliding (ring) and full layers, 2 kv heads
  prompts = PROMPTS + [[3, 4, 5], [9] * 20]
  one = G.generate_ids(load_pretrained(path), prompts, 20, [], 0)
  mesh = mesh_lib.make_mesh(2, 1, 2)
  model = load_pretrained(path, mesh=mesh)
  graphdef, state = nnx.split(model)
  assert G.model_mesh(state) is mesh
  assert G.generate_ids(model, prompts, 20, [], 0) == one
  with jax.set_mesh(mesh):
    ids, seg, pos, _ = G.left_pad(prompts, 4, 32, 32, 0)
    _, cache = G._prefill(graphdef, state, ids, seg, pos, 64)
  for k in cache["k"] + cache["v"]:
    want = mesh_lib.sharding_for(CausalLM.CACHE_AXES, k.shape, mesh)
    assert k.sharding.is_equivalent_to(want, k.ndim)
    B, K, S, H = k.shape
    assert k.sharding.shard_shape(k.shape) == (B // 2, K // 2, S, H)  # batch and kv heads both split
  for name in ("segment_ids", "positions", "ring_segment_ids", "ring_positions"):
    assert cache[name].sharding.shard_shape(cache[name].shape)[0] == 2, name


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_generate_json_matches_hf_greedy(tmp_path):
  """`jaxtune generate --temperature 0 --json` on a tiny HF checkpoint gives transformers' default greedy ids,
  stopping where the checkpoint's generation_config.json says (as transformers and vLLM do)."""
  import json

  import torch
  import transformers

  from tests.helpers.cli import jaxtune
  from tests.helpers.hf_models import make_tiny_chat_model
  model_dir, tok = make_tiny_chat_model(tmp_path, "llama", seed=3)
  prompt, n = "What is the capital of France?", 10
  (ids,) = G.encode_prompts(tok, [[{"role": "user", "content": prompt}]])
  free = G.generate_ids(load_pretrained(model_dir), [ids], n, [], 0)[0]  # no stop token: n tokens
  # The checkpoint declares its 4th greedy token as eos: both sides must stop right after it.
  stop_at = free[3]
  with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
    json.dump({"eos_token_id": [stop_at], "pad_token_id": 0}, f)
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  with torch.no_grad():
    ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=n)
  want = G._cut(ref[0, len(ids):].tolist(), [stop_at])
  assert want == free[:free.index(stop_at) + 1] and len(want) <= 4

  p = jaxtune("generate", "--model", str(model_dir), "--prompt", prompt, "--max-new-tokens", str(n),
              "--temperature", "0", "--json")
  (out,) = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
  assert out["prompt"] == prompt
  assert out["completion_ids"] == want
  assert out["completion"] == tok.decode(want, skip_special_tokens=True)


def test_stop_ids_follow_the_checkpoint(tmp_path):
  import json

  from tests.helpers.tokenizers import make_tokenizer
  _, tok = make_tokenizer(str(tmp_path), template="chatml")
  fallback = G.stop_token_ids(tok)  # nothing declared: the tokenizer's eos and the end-of-turn markers it knows
  assert tok.eos_token_id in fallback and tok.convert_tokens_to_ids("<|im_end|>") in fallback
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
  assert G.stop_token_ids(tok, str(tmp_path)) == [7]
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 8]}))
  assert G.stop_token_ids(tok, str(tmp_path)) == [8, 9]
  assert G.stop_token_ids(tok, str(tmp_path), end_of_turn=True) == sorted({8, 9, *fallback})


def test_cli_generate_without_a_chat_template(tmp_path):
  """A checkpoint whose tokenizer has no chat template: one clear error line, or --chat-template."""
  import json

  from tests.helpers.cli import jaxtune
  from tests.helpers.hf_models import make_tiny_chat_model
  model_dir, tok = make_tiny_chat_model(tmp_path, "llama", chat_template="")  # no chat template
  p = jaxtune("generate", "--model", str(model_dir), "--prompt", "hi", check=False)
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert "has no chat template" in p.stderr and "--chat-template" in p.stderr
  p = jaxtune("generate", "--model", str(model_dir), "--prompt", "hi", "--chat-template", "llama3",
              "--max-new-tokens", "3", "--json")
  (out,) = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
  assert 1 <= len(out["completion_ids"]) <= 3
