"""Batched greedy decoding of chat prompts.

Prompts are rendered with the tokenizer's chat template, left-padded into one
fixed [B, T] buffer (T = padded prompt length + max_new_tokens) and decoded
inside a single jitted `lax.while_loop`: every step recomputes the forward over
the whole buffer and writes the argmax at the next column. Padding is its own
segment (id 0) and positions restart at each row's first real token, so a
row's tokens do not depend on what else is in the batch.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.data.templates import END_OF_TURN

_LEN_MULTIPLE = 32  # prompt lengths are padded up to this, to share compilations


def stop_token_ids(tokenizer) -> list[int]:
  """The tokenizer's eos plus every end-of-turn marker it knows."""
  ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
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


@partial(jax.jit, static_argnums=(0,))
def _decode(graphdef, state, ids_BxT, seg_BxT, pos_BxT, done_B, start, stop_ids_S, pad_id):
  """Greedy tokens written at columns start..T-1; finished rows get `pad_id`."""
  model = nnx.merge(graphdef, state)
  T = ids_BxT.shape[1]

  def cond(carry):
    col, _, done = carry
    return (col < T) & ~jnp.all(done)

  def body(carry):
    col, ids, done = carry
    logits_BxTxV = model(ids, positions=pos_BxT, segment_ids=seg_BxT)
    last_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, col - 1, axis=1, keepdims=False)
    tok_B = jnp.argmax(last_BxV, axis=-1).astype(jnp.int32)
    tok_B = jnp.where(done, pad_id, tok_B)
    ids = jax.lax.dynamic_update_index_in_dim(ids, tok_B, col, axis=1)
    done = done | jnp.isin(tok_B, stop_ids_S)
    return col + 1, ids, done

  _, ids_BxT, _ = jax.lax.while_loop(cond, body, (start, ids_BxT, done_B))
  return ids_BxT


def generate_ids(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 pad_id: int, *, batch_size: int = 64) -> list[list[int]]:
  """Greedy continuations of token-id prompts, each cut after its first stop token."""
  if not prompts:
    return []
  graphdef, state = nnx.split(model)
  longest = max(len(p) for p in prompts)
  length = -(-longest // _LEN_MULTIPLE) * _LEN_MULTIPLE
  total = length + max_new_tokens
  rows = min(batch_size, 1 << (len(prompts) - 1).bit_length())
  stop_S = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
  out: list[list[int]] = []
  for i in range(0, len(prompts), rows):
    chunk = prompts[i:i + rows]
    ids, seg, pos, done = left_pad(chunk, rows, length, total, pad_id)
    res = np.asarray(_decode(graphdef, state, ids, seg, pos, done, jnp.int32(length), stop_S,
                             jnp.int32(pad_id)))
    for b in range(len(chunk)):
      out.append(_cut(res[b, length:].tolist(), stop_ids))
  return out


def _cut(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
  for j, t in enumerate(tokens):
    if t in stop_ids:
      return tokens[:j + 1]
  return tokens


def greedy_generate(model, tokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
                    *, batch_size: int = 64) -> list[str]:
  """Greedy assistant replies to chat conversations, decoded without special tokens."""
  prompts = encode_prompts(tokenizer, conversations)
  stop = stop_token_ids(tokenizer)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
  outs = generate_ids(model, prompts, max_new_tokens, stop, pad_id, batch_size=batch_size)
  return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
