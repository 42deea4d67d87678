"""Reference log-probs computed once, before training, and cached by content.

For `dpo.reference=cached`: one forward pass of the starting model (with LoRA: the
base, adapters at zero) over every sequence of the train and eval pairs, in the
pipeline's own packed rows, sharded over all devices and hosts. Each sequence's
log-prob (the sum over its trained tokens) is stored under the SHA-256 of its tokens
and loss mask, in a file named by a fingerprint of the reference weights and the
compute dtype, so a resumed run, a run with another batch size, packing or mesh,
and a second run on the same data and model find it and compute nothing. Training
then holds no reference model.

The fingerprint is exact and topology-independent: per parameter, sums of the raw
32-bit words (and of the words times their index) in wrapping integer arithmetic,
which any sharding adds up to the same value.
"""

from __future__ import annotations

import hashlib
import io as _stdio
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune import io
from jaxtune import log as log_lib
from jaxtune import mesh as mesh_lib
from jaxtune.train import loss as loss_lib

log = logging.getLogger(__name__)

DEFAULT_DIR = os.path.join(os.environ.get("JAXTUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "jaxtune")), "reference")
VERSION = 1
STATS = {"forward_batches": 0, "computed": 0, "reused": 0}  # this process's counts (tests read them)


def _words(x: jax.Array) -> jax.Array:
  """The raw bits of an array as uint32 words (16-bit dtypes widened)."""
  if x.dtype.itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


@jax.jit
def _checksums(params) -> list[jax.Array]:
  out = []
  for x in jax.tree.leaves(params):
    w = _words(x).reshape(-1)
    idx = jax.lax.iota(jnp.uint32, w.size) * jnp.uint32(2654435761) + jnp.uint32(1)
    out.append(jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * idx, dtype=jnp.uint32)]))
  return out


def fingerprint(model: nnx.Module, dtype) -> str:
  """A digest of the model's parameters (every nnx.Param: the base weights; LoRA adapters are not the
  reference) and the compute dtype."""
  params = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
  flat = nnx.to_flat_state(params)
  names = [".".join(map(str, p)) + f":{v.get_value().shape}:{v.get_value().dtype}" for p, v in flat]
  sums = np.asarray(jax.device_get(_checksums(params)))
  h = hashlib.sha256(f"v{VERSION}|{jnp.dtype(dtype).name}|{'|'.join(names)}".encode())
  h.update(sums.astype("<u4").tobytes())
  return h.hexdigest()[:32]


def sequence_keys(store) -> np.ndarray:
  """[n, 16] uint8: a digest of each stored sequence's tokens and loss mask."""
  out = np.zeros((len(store.offsets) - 1, 16), np.uint8)
  for j in range(len(out)):
    a, b = store.offsets[j], store.offsets[j + 1]
    h = hashlib.blake2b(store.tokens[a:b].astype("<i4").tobytes(), digest_size=16)
    h.update(store.mask[a:b].astype(np.uint8).tobytes())
    out[j] = np.frombuffer(h.digest(), np.uint8)
  return out


def _cache_path(cache_dir: str, fp: str) -> str:
  return io.join(cache_dir, f"reference-{fp}.npz")


def load_cache(cache_dir: str, fp: str) -> dict[bytes, float]:
  path = _cache_path(cache_dir, fp)
  if not io.exists(path):
    return {}
  with np.load(_stdio.BytesIO(io.read_bytes(path))) as z:
    return {k.tobytes(): float(v) for k, v in zip(z["keys"], z["logps"])}


def save_cache(cache_dir: str, fp: str, table: dict[bytes, float]) -> None:
  keys = np.frombuffer(b"".join(table), np.uint8).reshape(-1, 16) if table else np.zeros((0, 16), np.uint8)
  buf = _stdio.BytesIO()
  np.savez(buf, keys=keys, logps=np.asarray(list(table.values()), np.float64))
  io.write_bytes(_cache_path(cache_dir, fp), buf.getvalue())


def _forward_fn(graphdef, num_segments: int, chunk: int):
  @jax.jit
  def f(state, batch):
    logp_BS, _ = loss_lib.sequence_logps(nnx.merge(graphdef, state), batch, num_segments, chunk)
    return logp_BS
  return f


def view_sequences(store) -> np.ndarray:
  """The stored sequence ids of a store's examples (a view's: `data.eval_fraction` splits one store)."""
  stored = np.arange(len(store)) if store.index is None else np.asarray(store.index)
  return (stored[:, None] * store.group + np.arange(store.group)[None]).reshape(-1)


def compute_logps(model: nnx.Module, pipeline, mesh, todo: np.ndarray, *, chunk: int = 0) -> np.ndarray:
  """Log-probs (float64 [stored sequences], NaN where not computed) of the stored sequences `todo` (bool
  mask) of `pipeline`'s store: a forward pass over the pipeline's packed rows of every example holding one,
  each process feeding its own rows, the results gathered on every process."""
  from jax.experimental import multihost_utils
  graphdef, state = nnx.split(model)
  out = np.full(len(todo), np.nan)
  sharding = mesh_lib.batch_sharding(mesh)
  fn = None
  units = np.flatnonzero(todo[view_sequences(pipeline.store)].reshape(-1, pipeline.group).any(axis=1))
  for batch in log_lib.progress(pipeline.one_pass(units=units), desc="reference log-probs", unit="batch"):
    seq_ids = batch["seq_ids"]
    if fn is None:
      fn = _forward_fn(graphdef, seq_ids.shape[1], chunk)
    logp = fn(state, mesh_lib.global_batch(batch, sharding))
    if not logp.is_fully_addressable:
      logp = multihost_utils.process_allgather(logp, tiled=True)
    logp = np.asarray(logp, np.float64)
    sel = seq_ids >= 0
    out[seq_ids[sel]] = logp[sel]
    STATS["forward_batches"] += 1
  return out


def attach_reference_logps(ctx, *, chunk: int = 0) -> None:
  """Gives the train (and eval) pipelines their sequences' reference log-probs, from the cache where it has
  them, computing the rest with the starting model (`ctx.model`; with LoRA its adapters are zero at the
  start, so it is the base)."""
  from jaxtune.config import compute_dtype
  cfg = ctx.cfg
  cache_dir = io.join(cfg.data.cache_dir, "reference") if cfg.data.cache_dir else DEFAULT_DIR
  fp = fingerprint(ctx.model, compute_dtype(cfg.model.dtype))
  table = load_cache(cache_dir, fp)
  computed = total = 0
  for name, pipe in ctx.pipelines.items():
    if pipe is None:
      continue
    keys = sequence_keys(pipe.store)
    mine = np.zeros(len(keys), bool)
    mine[view_sequences(pipe.store)] = True  # this split's sequences (all, unless eval_fraction splits a store)
    values = np.array([table.get(k.tobytes(), np.nan) for k in keys], np.float64)
    todo = np.isnan(values) & mine
    STATS["reused"] += int((mine & ~todo).sum())
    total += int(mine.sum())
    if todo.any():
      fresh = compute_logps(ctx.model, pipe, ctx.mesh, todo, chunk=chunk)
      for k, v in zip(keys[todo], fresh[todo]):
        table[k.tobytes()] = float(v)
      computed += int(todo.sum())
      # one value per content: copies of a sequence (computed in different rows, equal to float rounding) all
      # take the table's, so this run sees exactly what a later run reads back from the cache
      values = np.array([table.get(k.tobytes(), np.nan) for k in keys], np.float64)
    if np.isnan(values[mine]).any():
      raise RuntimeError(f"reference log-probs missing for {int(np.isnan(values[mine]).sum())} {name} sequences")
    pipe.set_values(np.where(mine, values, 0.0).astype(np.float32))
  STATS["computed"] += computed
  if computed and jax.process_index() == 0:
    save_cache(cache_dir, fp, table)
  log.info("reference log-probs: %d sequences computed, %d reused from %s", computed, total - computed,
           _cache_path(cache_dir, fp))
