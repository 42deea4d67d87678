"""Batched decoding of chat prompts with a preallocated KV cache.

Prompts are rendered with the tokenizer's chat template and left-padded into a
[B, L] block, L one of a few fixed buckets (powers of two from 32), so prompts
of similar length share a compilation. A jitted prefill writes the block into a
KV cache of L + (max_new_tokens rounded up to 32) slots; a jitted
`lax.while_loop` then writes one token per step into the cache and stops when
every row has produced a stop token (or max_new_tokens). Padding is its own
segment (id 0) and positions restart at each row's first real token, so a
row's tokens do not depend on what else is in the batch.

Sliding-window layers keep only a ring of `window` slots (see
`CausalLM.init_cache`), full-attention layers every column. A model loaded
sharded over a mesh decodes under that mesh, with the cache sharded by logical
axes (batch over the data axes, kv heads over the tensor axis).

Prompts are sorted by length before they are cut into batches, so each batch
pads to the bucket of its own longest prompt; results come back in input order.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature are
filtered to the top_k (0 = all) most likely tokens, then to the smallest set
whose probability reaches top_p, and sampled. Every row has its own key,
`fold_in(fold_in(PRNGKey(seed), a), b)` for the row's sample id (a, b) (by default
(its index in the call, 0)), folded with the step number: a row's tokens depend on
its seed, sample id, prompt and model only, not on the batch it shares, the batch
size or the mesh.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.data.templates import END_OF_TURN

_MIN_BUCKET = 32  # smallest prompt-length bucket; buckets are powers of two from here
_NEW_MULTIPLE = 32  # cache room for new tokens is rounded up to this


def declared_eos_ids(model_dir: str) -> list[int]:
  """The eos ids a checkpoint declares (generation_config.json, else config.json): where transformers'
  `generate` and vLLM stop."""
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(model_dir, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
      if eos is not None:
        return sorted(set(eos if isinstance(eos, list) else [eos]))
  return []


def stop_token_ids(tokenizer, model_dir: str | None = None, *, end_of_turn: bool = False) -> list[int]:
  """Where generation stops: the eos ids `model_dir` declares, as transformers and vLLM stop; with none
  declared (or with `end_of_turn`), also the tokenizer's eos and every end-of-turn marker it knows."""
  ids = set(declared_eos_ids(model_dir)) if model_dir else set()
  if not ids or end_of_turn:
    if tokenizer.eos_token_id is not None:
      ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
  return sorted(ids)


def encode_prompts(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[list[int]]:
  """Token ids of each conversation rendered with a trailing assistant header."""
  out = []
  for conv in conversations:
    text = tokenizer.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=False)
    out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
  return out


def length_bucket(n: int) -> int:
  """The padded prompt length for a longest prompt of n tokens."""
  return max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())


def left_pad(prompts: Sequence[Sequence[int]], rows: int, length: int, total: int, pad_id: int):
  """(ids, segment_ids, positions, done) [rows, total] with prompts ending at `length`.

  Rows beyond len(prompts) are fillers: one pad token, marked done.
  """
  ids = np.full((rows, total), pad_id, np.int32)
  seg = np.ones((rows, total), np.int32)
  pos = np.zeros((rows, total), np.int32)
  done = np.ones((rows,), bool)
  for b in range(rows):
    p = prompts[b] if b < len(prompts) else [pad_id]
    start = length - len(p)
    ids[b, start:length] = p
    seg[b, :start] = 0
    pos[b, start:] = np.arange(total - start)
    done[b] = b >= len(prompts)
  return ids, seg, pos, done


def sample_tokens(logits_BV: jax.Array, key: jax.Array, temperature, top_p, top_k) -> jax.Array:
  """int32 tokens [B]: argmax when temperature <= 0, else top-k / top-p filtered sampling. `key` is one
  raw PRNG key [2] for the batch or one per row [B, 2]; row b's draw depends only on its own key."""

  def greedy(_):
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)

  def sample(_):
    V = logits_BV.shape[-1]
    x_BV = logits_BV.astype(jnp.float32) / temperature
    sorted_BV = -jnp.sort(-x_BV, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
    x_BV = jnp.where(x_BV < kth_B1, -jnp.inf, x_BV)
    sorted_BV = jnp.where(jnp.arange(V)[None] < k, sorted_BV, -jnp.inf)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    keep_BV = (jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p  # the most likely token always stays
    thresh_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    x_BV = jnp.where(x_BV < thresh_B1, -jnp.inf, x_BV)
    keys_B2 = key if key.ndim == 2 else jax.random.split(key, x_BV.shape[0])
    return jax.vmap(jax.random.categorical)(keys_B2, x_BV).astype(jnp.int32)

  return jax.lax.cond(temperature > 0, sample, greedy, None)


@partial(jax.jit, static_argnums=(0, 5))
def _prefill(graphdef, state, ids_BL, seg_BL, pos_BL, cache_len: int):
  """Writes the left-padded prompts into a fresh cache; returns (last-column logits [B, V], cache)."""
  model = nnx.merge(graphdef, state)
  B, L = ids_BL.shape
  cache = model.init_cache(B, cache_len)
  h_BLD, cache = model.decode_hidden(ids_BL, pos_BL, cache, 0, segment_ids=seg_BL)
  return model.logits_from_hidden(h_BLD[:, -1:])[:, 0], cache


@jax.jit
def _row_keys(seed, a_B, b_B):
  """uint32 [B, 2]: fold_in(fold_in(PRNGKey(seed), a), b) per row."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(base, a), b))(a_B, b_B)


def row_keys(seed: int, sample_ids: Sequence[tuple[int, int]]) -> np.ndarray:
  """The PRNG key [len, 2] of each row from its sample id (a, b): uint32 integers, e.g. (prompt, sample)."""
  ab = np.asarray(sample_ids, np.uint64).reshape(-1, 2) & 0xFFFFFFFF
  return np.asarray(_row_keys(np.uint32(seed & 0xFFFFFFFF), ab[:, 0].astype(np.uint32), ab[:, 1].astype(np.uint32)))


@partial(jax.jit, static_argnums=(0, 14))
def _decode_loop(graphdef, state, cache, logits_BV, next_pos_B, done_B, start, max_new, stop_ids_S, pad_id, keys_B2,
                 temperature, top_p, top_k, new_cap: int):
  """Tokens [B, new_cap] sampled one per step from the cache (columns start..); finished rows get `pad_id`.
  Row b's token at step i is drawn with fold_in(keys_B2[b], i)."""
  model = nnx.merge(graphdef, state)
  B = logits_BV.shape[0]
  out_BN = jnp.full((B, new_cap), pad_id, jnp.int32)

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < max_new) & ~jnp.all(done)

  def body(carry):
    i, logits_BV, cache, done, out_BN = carry
    step_keys_B2 = jax.vmap(jax.random.fold_in, (0, None))(keys_B2, i)
    tok_B = sample_tokens(logits_BV, step_keys_B2, temperature, top_p, top_k)
    tok_B = jnp.where(done, pad_id, tok_B)
    out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, tok_B, i, axis=1)
    done = done | jnp.isin(tok_B, stop_ids_S)
    logits_B1V, cache = model.decode(tok_B[:, None], (next_pos_B + i)[:, None], cache, start + i)
    return i + 1, logits_B1V[:, 0], cache, done, out_BN

  carry = (jnp.int32(0), logits_BV, cache, done_B, out_BN)
  *_, out_BN = jax.lax.while_loop(cond, body, carry)
  return out_BN


def model_mesh(state) -> jax.sharding.Mesh | None:
  """The mesh the parameters are sharded over (None on a single device)."""
  for x in jax.tree.leaves(state):
    s = getattr(x, "sharding", None)
    if isinstance(s, jax.sharding.NamedSharding) and s.mesh.size > 1:
      return s.mesh
  return None


def generate_ids(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 pad_id: int, *, batch_size: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int = 0, sample_ids: Sequence[tuple[int, int]] | None = None,
                 timings: dict | None = None) -> list[list[int]]:
  """Continuations of token-id prompts (greedy at temperature 0), each cut after its first stop token.

  With no stop ids every row gets exactly `max_new_tokens`. Prompts are decoded in batches of similar
  length (see the module docstring); the result is in input order. `sample_ids`: one (a, b) pair of
  uint32 integers per prompt that, with `seed`, decides its random draws (default (index, 0)). A model
  sharded over a mesh decodes under that mesh, its KV cache sharded by logical axes. `timings`, when given,
  accumulates "prefill_s" and "decode_s" (wall time of the prefills and of the decode loops, each blocked
  on) and "new_tokens" (tokens returned).
  """
  if not prompts or max_new_tokens <= 0:
    return [[] for _ in prompts]
  if sample_ids is None:
    sample_ids = [(i, 0) for i in range(len(prompts))]
  if len(sample_ids) != len(prompts):
    raise ValueError(f"{len(sample_ids)} sample ids for {len(prompts)} prompts")
  keys_P2 = row_keys(seed, sample_ids)
  graphdef, state = nnx.split(model)
  mesh = model_mesh(state)
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    return _generate_batches(graphdef, state, prompts, keys_P2, max_new_tokens, stop_ids, pad_id, batch_size,
                             temperature, top_p, top_k, timings)


def _generate_batches(graphdef, state, prompts, keys_P2, max_new_tokens, stop_ids, pad_id, batch_size, temperature,
                      top_p, top_k, timings):
  new_cap = -(-max_new_tokens // _NEW_MULTIPLE) * _NEW_MULTIPLE
  rows = min(batch_size, 1 << (len(prompts) - 1).bit_length())
  stop_S = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of similar lengths
  out: list[list[int] | None] = [None] * len(prompts)
  for i in range(0, len(order), rows):
    idx = order[i:i + rows]
    chunk = [prompts[j] for j in idx]
    length = length_bucket(max(len(p) for p in chunk))
    ids, seg, pos, done = left_pad(chunk, rows, length, length, pad_id)
    keys_B2 = np.zeros((rows, 2), np.uint32)
    keys_B2[:len(idx)] = keys_P2[idx]
    t0 = time.perf_counter()
    logits_BV, cache = _prefill(graphdef, state, ids, seg, pos, length + new_cap)
    if timings is not None:
      jax.block_until_ready(cache)
      t1 = time.perf_counter()
    res = _decode_loop(graphdef, state, cache, logits_BV, jnp.asarray(pos[:, -1] + 1), jnp.asarray(done),
                       jnp.int32(length), jnp.int32(max_new_tokens), stop_S, jnp.int32(pad_id), keys_B2,
                       jnp.float32(temperature), jnp.float32(top_p), jnp.int32(top_k), new_cap)
    if not res.is_fully_addressable:  # rows sharded over several processes: every process gets them all
      from jax.experimental import multihost_utils
      res = multihost_utils.process_allgather(res, tiled=True)
    res = np.asarray(res)
    if timings is not None:
      t2 = time.perf_counter()
      timings["prefill_s"] = timings.get("prefill_s", 0.0) + (t1 - t0)
      timings["decode_s"] = timings.get("decode_s", 0.0) + (t2 - t1)
    for b, j in enumerate(idx):
      out[j] = _cut(res[b, :max_new_tokens].tolist(), stop_ids)
  if timings is not None:
    timings["new_tokens"] = timings.get("new_tokens", 0) + sum(len(o) for o in out)
  return out


def _cut(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
  for j, t in enumerate(tokens):
    if t in stop_ids:
      return tokens[:j + 1]
  return tokens


def pad_id_for(tokenizer, stop: Sequence[int]) -> int:
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)


def generate(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             batch_size: int = 64, stop_ids: Sequence[int] | None = None) -> list[dict]:
  """Assistant replies to chat conversations: one {"completion", "completion_ids"} per conversation.

  Rows stop at `stop_ids` (default: `stop_token_ids(tokenizer)`); `completion_ids` includes the
  stop token when one was produced; `completion` is decoded without special tokens.
  """
  prompts = encode_prompts(tokenizer, conversations)
  stop = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
  outs = generate_ids(model, prompts, max_new_tokens, stop, pad_id_for(tokenizer, stop), batch_size=batch_size,
                      temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
  return [{"completion": tokenizer.decode(o, skip_special_tokens=True), "completion_ids": o} for o in outs]


def load_model(path: str, chat_template: str = "", *, mesh=None, dtype: str | None = None
               ) -> tuple[nnx.Module, object, list[int]]:
  """(model, tokenizer, stop ids) of an HF model dir / hub id or a jaxtune run dir (its latest checkpoint,
  LoRA adapters applied, with the tokenizer it trained with); `chat_template` for models without one adds
  the tokens it needs and grows the vocabulary, as training does. With `mesh`, parameters are sharded over
  it by the rules table; `dtype` (a model.dtype value) is the compute dtype (default: float32 for an HF dir,
  the run's model.dtype for a run dir)."""
  from jaxtune import rundir
  from jaxtune.config import compute_dtype
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.models.resize import grow_for_tokenizer
  if path.strip() and rundir.is_run_dir(path):
    from jaxtune.export import restore_model
    model, _, _ = restore_model(path, mesh=mesh, dtype=dtype)
    model_dir = rundir.hf_source_dir(path)
  else:
    from jaxtune.weights.hf_load import load_pretrained, resolve_model_dir
    model_dir = str(resolve_model_dir(path, what="--model"))
    model = load_pretrained(model_dir, dtype=compute_dtype(dtype) if dtype else None, mesh=mesh)
  tokenizer = load_tokenizer(model_dir, chat_template)
  grow_for_tokenizer(model, tokenizer)
  return model, tokenizer, stop_token_ids(tokenizer, model_dir)


def greedy_generate(model, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
                    *, batch_size: int = 64) -> list[str]:
  """Greedy assistant replies to chat conversations, decoded without special tokens."""
  outs = generate(model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size)
  return [o["completion"] for o in outs]
