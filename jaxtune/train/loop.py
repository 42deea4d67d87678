"""The host loop: build everything from a Config, then dispatch steps, log, checkpoint.

The step is dispatched before the previous step's metrics are read back, so the
host never waits on the device except once per step for a few scalars.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import jaxtune
from jaxtune import mesh as mesh_lib
from jaxtune.config import Config
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.metrics import MetricsWriter, flops_per_token, mfu
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import TrainState, init_state, param_count, state_shardings
from jaxtune.train.step import jit_train_step

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
HF_SOURCE = "hf_source"  # RUN_DIR/hf_source: config.json, generation_config.json, tokenizer files


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, a batch with nothing to train on)."""


@dataclasses.dataclass
class TrainResult:
  graphdef: nnx.GraphDef
  state: TrainState
  tokenizer: Any
  run_dir: str
  last_metrics: dict[str, Any]

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state.params, self.state.rest)


def _write_run_files(cfg: Config, tokenizer, model_dir: str) -> None:
  """RUN_DIR/config.json and RUN_DIR/hf_source/ (what export needs besides the params)."""
  if jax.process_index() != 0:
    return
  os.makedirs(cfg.run.dir, exist_ok=True)
  with open(os.path.join(cfg.run.dir, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"jaxtune_version": jaxtune.__version__, **cfg.to_dict()}, f, indent=2)
  src = os.path.join(cfg.run.dir, HF_SOURCE)
  os.makedirs(src, exist_ok=True)
  for name in ("config.json", "generation_config.json"):
    if os.path.exists(os.path.join(model_dir, name)):
      shutil.copyfile(os.path.join(model_dir, name), os.path.join(src, name))
  tokenizer.save_pretrained(src)


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def train(cfg: Config) -> TrainResult:
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.data.pipeline import build_pipeline
  from jaxtune.weights.hf_load import load_pretrained, resolve_model_dir

  t_start = time.perf_counter()
  is_main = jax.process_index() == 0
  mesh = mesh_lib.mesh_from_cfg(cfg.mesh)
  n_proc = jax.process_count()
  if cfg.train.batch_size % n_proc:
    raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by {n_proc} processes")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = cfg.train.batch_size // cfg.train.grad_accum
  if micro % batch_shards:
    raise ValueError(f"micro-batch {micro} (train.batch_size / train.grad_accum) is not divisible by "
                     f"mesh.data * mesh.fsdp = {batch_shards}")

  model_dir = resolve_model_dir(cfg.model.path)
  tokenizer = load_tokenizer(model_dir, cfg.data.chat_template)
  pipe = build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size // n_proc,
                        seed=cfg.train.seed, shard_index=jax.process_index(), shard_count=n_proc)
  stats = pipe.stats.to_dict()
  if is_main:
    print(f"data: {stats['examples']} examples ({stats['loss_tokens']} loss tokens) from {stats['records']} "
          f"records; dropped {stats['dropped']} {stats.get('dropped_by_reason', {})}; "
          f"packing efficiency {stats.get('packing_efficiency', float('nan')):.3f}", flush=True)
  _write_run_files(cfg, tokenizer, model_dir)

  with jax.set_mesh(mesh):
    model = load_pretrained(model_dir, dtype=DTYPES[cfg.model.dtype], param_dtype=DTYPES[cfg.model.param_dtype],
                            mesh=mesh, remat=cfg.model.remat)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    graphdef, state = init_state(model, tx)
    mcfg = model.config
    del model
    shardings = state_shardings(state)
    batch_sh = mesh_lib.batch_sharding(mesh)
    step_fn = jit_train_step(graphdef, tx, schedule, cfg.train.grad_accum, shardings, batch_sh)

    mgr = ckpt_lib.make_manager(cfg.run.dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    data_iter = pipe.iterator()
    done = ckpt_lib.good_steps(mgr)
    if done:
      state, meta = ckpt_lib.restore(mgr, done[0], state, data_iter)
      if is_main:
        print(f"resumed from {ckpt_lib.checkpoint_dir(cfg.run.dir)}/{done[0]}", flush=True)
    meta = {"config": cfg.to_dict(), "jaxtune_version": jaxtune.__version__}

    n_params = param_count(state.params)
    fpt = flops_per_token(n_params, mcfg.num_layers, mcfg.hidden_size, cfg.data.seq_len)
    writer = MetricsWriter(cfg.run.dir)
    start = int(jax.device_get(state.step))
    total = cfg.train.steps
    bar = tqdm(total=total, initial=start, disable=not is_main, unit="step", dynamic_ncols=True)
    last: dict[str, Any] = {}
    timer = {"t": time.perf_counter(), "tokens": 0}

    def handle(step: int, metrics) -> None:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(m["loss"]):
        raise TrainingError(f"step {step}: loss is {m['loss']}; stopping (the last good checkpoint is kept "
                            f"under {ckpt_lib.checkpoint_dir(cfg.run.dir)})")
      if m["loss_tokens"] == 0:
        raise TrainingError(f"step {step}: the batch has no trained token (all-zero loss mask)")
      now = time.perf_counter()
      timer["tokens"] += m["tokens"]
      if step == start + 1 and is_main:
        tqdm.write(f"first step (compile + run) took {now - timer['t']:.1f}s; loss {m['loss']:.4f}")
      if step % cfg.train.log_every == 0 or step == total or step == start + 1:
        tps = timer["tokens"] / max(now - timer["t"], 1e-9)
        row = {"step": step, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
               "tokens_per_s": tps, "mfu": mfu(tps, fpt), "loss_tokens": int(m["loss_tokens"])}
        writer.write(row)
        last.update(row)
        bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tps:,.0f}")
        timer["t"], timer["tokens"] = now, 0
      bar.update(1)

    pending = None
    try:
      for step in range(start, total):
        batch = _global_batch(next(data_iter), batch_sh)
        state, metrics = step_fn(state, batch)
        if pending is not None:
          handle(*pending)
        pending = (step + 1, metrics)
        if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < total:
          handle(*pending)
          pending = None
          ckpt_lib.save(mgr, state, data_iter, meta)
      if pending is not None:
        handle(*pending)
      if total > start or not done:
        ckpt_lib.save(mgr, state, data_iter, meta, force=True)
      mgr.wait_until_finished()
    finally:
      bar.close()
      writer.close()
      mgr.close()
  if is_main:
    print(f"trained {total - start} steps in {time.perf_counter() - t_start:.1f}s; "
          f"checkpoints in {ckpt_lib.checkpoint_dir(cfg.run.dir)}", flush=True)
  return TrainResult(graphdef=graphdef, state=state, tokenizer=tokenizer, run_dir=cfg.run.dir, last_metrics=last)
