"""Log-likelihoods of continuations on jaxtune's forward pass, batched by length and sharded over the mesh.

A request is (context ids, continuation ids); its score is (sum of log p(continuation token | everything
before it), whether every continuation token is the argmax), as lm-evaluation-harness defines them. The
scored row is (context + continuation)[-(max_length + 1):]: a context too long for the model loses tokens
from the left, as in lm-eval's Hugging Face backend.

Requests are sorted by length (longest first) and cut into batches of `batch_size` rows, each padded on the
right to a power-of-two bucket of its longest row, so a run compiles once per bucket. Padding is its own
segment (id 0), so it never changes a real row's scores. The batch is sharded over the batch axes of the
model's mesh (every process builds the same global batch and feeds its own rows), and the per-row scores
come back to every process. Long rows of large vocabularies never hold [rows, seq, vocab] logits: the
output projection then runs over a slice of positions at a time (`jaxtune.train.loss.chunked_sum`).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtune import log as log_lib
from jaxtune import mesh as mesh_lib
from jaxtune.generate import length_bucket, model_mesh
from jaxtune.train.loss import chunked_sum, target_weights

_LOGITS_BUDGET = 1 << 28  # float32 logits elements held at once (1 GiB) before the projection is chunked


def _row_sums(logits_BxCxV: jax.Array, y_BxC: jax.Array, w_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """([B] sum of log p(y) over weighted targets, [B] count of weighted targets that are not the argmax)."""
  logits = logits_BxCxV.astype(jnp.float32)
  logp_BxC = -optax.softmax_cross_entropy_with_integer_labels(logits, y_BxC)
  miss_BxC = (jnp.argmax(logits, axis=-1) != y_BxC).astype(jnp.float32)
  return (logp_BxC * w_BxC).sum(-1), (miss_BxC * w_BxC).sum(-1)


@partial(jax.jit, static_argnums=(0, 3))
def _score_batch(graphdef, state, batch, chunk: int):
  model = nnx.merge(graphdef, state)
  B, T = batch["input_ids"].shape
  if chunk and chunk < T - 1:
    init = (jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.float32))
    (logp_B, miss_B), _ = chunked_sum(model, batch, chunk, _row_sums, init)
    return logp_B, miss_B
  logits_BxTxV = model(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"])
  return _row_sums(logits_BxTxV[:, :-1], batch["input_ids"][:, 1:], target_weights(batch))


def scored_row(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[list[int], int]:
  """(the tokens the model reads, the number of continuation tokens at its end that are scored)."""
  if not continuation:
    raise ValueError("a continuation must have at least one token")
  row = (list(context) + list(continuation))[-(max_length + 1):]
  return row, min(len(continuation), len(row) - 1)


def make_batch(rows: Sequence[tuple[list[int], int]], n_rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
  """input_ids, positions, segment_ids, loss_mask [n_rows, length]: rows left-aligned, the last `n_cont`
  tokens of each trained (loss_mask 1); padding (and filler rows) is segment 0."""
  ids = np.full((n_rows, length), pad_id, np.int32)
  seg = np.zeros((n_rows, length), np.int32)
  mask = np.zeros((n_rows, length), np.int32)
  for b, (row, n_cont) in enumerate(rows):
    ids[b, :len(row)] = row
    seg[b, :len(row)] = 1
    mask[b, len(row) - n_cont:len(row)] = 1
  pos = np.broadcast_to(np.arange(length, dtype=np.int32), (n_rows, length)).copy()
  return {"input_ids": ids, "positions": pos, "segment_ids": seg, "loss_mask": mask}


def _chunk_for(rows: int, vocab: int) -> int:
  """Positions per slice of the output projection so that [rows, chunk, vocab] float32 fits the budget."""
  c = max(_LOGITS_BUDGET // max(rows * vocab, 1), 16)
  return 1 << (c.bit_length() - 1)


def continuation_scores(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_length: int,
                        batch_size: int = 16, pad_id: int = 0, desc: str = "loglikelihood"
                        ) -> list[tuple[float, bool]]:
  """(log-likelihood, is_greedy) of each (context ids, continuation ids), in input order."""
  if not requests:
    return []
  graphdef, state = nnx.split(model)
  mesh = model_mesh(state)
  shards = mesh.shape["data"] * mesh.shape["fsdp"] if mesh is not None else 1
  rows_per_batch = -(-batch_size // shards) * shards
  chunk = _chunk_for(rows_per_batch, model.config.vocab_size)
  scored = [scored_row(c, x, max_length) for c, x in requests]
  order = sorted(range(len(scored)), key=lambda i: -len(scored[i][0]))
  out: list[tuple[float, bool] | None] = [None] * len(scored)
  bar = log_lib.progress(total=len(scored), desc=desc, unit="req")
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    sharding = mesh_lib.batch_sharding(mesh) if mesh is not None else None
    for i in range(0, len(order), rows_per_batch):
      idx = order[i:i + rows_per_batch]
      length = length_bucket(len(scored[idx[0]][0]))
      batch = make_batch([scored[j] for j in idx], rows_per_batch, length, pad_id)
      batch = mesh_lib.global_batch(batch, sharding) if sharding is not None else batch
      logp_B, miss_B = _score_batch(graphdef, state, batch, chunk)
      logp_B, miss_B = (_host(x) for x in (logp_B, miss_B))
      for b, j in enumerate(idx):
        out[j] = (float(logp_B[b]), bool(miss_B[b] == 0))
      bar.update(len(idx))
  bar.close()
  return out


def _host(x: jax.Array) -> np.ndarray:
  """A batch-sharded result on every process."""
  if not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)
