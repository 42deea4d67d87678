"""The host loop: build everything from a Config, then dispatch steps, log, checkpoint.

The step is dispatched before the previous step's metrics are read back, so the
host waits on the device only for a few scalars one step late. A checkpoint is
saved only after the step it holds has been checked finite. SIGTERM/SIGINT (and
a JAX/Orbax preemption notice) finish the current step, save synchronously and
return normally.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

import jaxtune
from jaxtune import mesh as mesh_lib
from jaxtune import rundir
from jaxtune.config import Config
from jaxtune.models.resize import grow_for_tokenizer
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.metrics import MetricsWriter, flops_per_token, mfu
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import TrainState, init_state, param_count, state_shardings
from jaxtune.train.step import jit_train_step

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  """model.dtype as a jnp dtype; "auto" is bfloat16 on accelerators (GPU, TPU) and float32 on CPU."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[name]
HF_SOURCE = "hf_source"  # RUN_DIR/hf_source: config.json, generation_config.json, tokenizer files

# Config fields that decide which tokens a resumed run sees, in which order.
DETERMINISM_KEYS = (("data", "train"), ("data", "seq_len"), ("data", "packing"), ("data", "mask"),
                    ("data", "overlong"), ("data", "chat_template"), ("data", "workers"), ("train", "seed"),
                    ("train", "batch_size"), ("model", "path"), ("lora", "rank"), ("lora", "targets"),
                    ("data", "eval_fraction"), ("data", "eval_seed"))


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, a batch with nothing to train on, a changed config)."""


@dataclasses.dataclass
class TrainResult:
  graphdef: nnx.GraphDef
  state: TrainState
  tokenizer: Any
  run_dir: str
  last_metrics: dict[str, Any]
  stopped_early: bool = False
  samples: list[dict] | None = None  # the last eval-prompt samples (eval.prompts), if any

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state.params, self.state.rest)


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks once per step."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self._old[s] = signal.signal(s, self._set)
    return self

  def _set(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.signum = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


def _write_run_files(cfg: Config, tokenizer, model_dir: str, hf_config: dict | None = None) -> None:
  """RUN_DIR/config.json and RUN_DIR/hf_source/ (what export needs besides the params); `hf_config`
  replaces the copied config.json when training changed it (a vocabulary grown for added tokens).
  hf_source/ is built in a local dir: the real one, or a temp dir uploaded when run.dir is remote."""
  if jax.process_index() != 0:
    return
  rundir.write_json(rundir.join(cfg.run.dir, "config.json"),
                    {"jaxtune_version": jaxtune.__version__, **cfg.to_dict()})
  with rundir.LocalDir(rundir.join(cfg.run.dir, HF_SOURCE)) as out:
    src = out.path
    for name in ("config.json", "generation_config.json"):
      if os.path.exists(os.path.join(model_dir, name)):
        shutil.copyfile(os.path.join(model_dir, name), os.path.join(src, name))
    if hf_config is not None:
      with open(os.path.join(src, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    gen_path = os.path.join(src, "generation_config.json")
    eos_id = tokenizer.eos_token_id
    # The tokenizer's eos (the template's end-of-turn marker when data.chat_template set it) is
    # declared, so that transformers and vLLM stop where the tuned model ends its turns.
    if eos_id is not None:
      if os.path.exists(gen_path):
        with open(gen_path, encoding="utf-8") as f:
          gen = json.load(f)
      else:  # what transformers derives from config.json
        with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
          base = json.load(f)
        gen = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if base.get(k) is not None}
      old = gen.get("eos_token_id")
      old = [] if old is None else old if isinstance(old, list) else [old]
      if eos_id not in old:
        gen["eos_token_id"] = old + [eos_id]
        with open(gen_path, "w", encoding="utf-8") as f:
          json.dump(gen, f, indent=2, sort_keys=True)
    tokenizer.save_pretrained(src)


def attach_lora(model, cfg: Config, mesh) -> None:
  """Adds the configured LoRA adapters (deterministic from train.seed), placed by the rules table."""
  from jaxtune.models.lora import add_lora
  add_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets,
           rngs=nnx.Rngs(cfg.train.seed))
  adapters = nnx.state(model, nnx.LoRAParam)
  nnx.update(model, jax.device_put(adapters, mesh_lib.state_shardings(adapters, mesh)))


def _check_resume_config(cfg: Config, saved: dict) -> None:
  now = json.loads(json.dumps(cfg.to_dict()))
  changed = []
  for sec, key in DETERMINISM_KEYS:
    if sec in saved and key in saved[sec] and saved[sec][key] != now[sec][key]:
      changed.append(f"{sec}.{key}: {saved[sec][key]!r} -> {now[sec][key]!r}")
  if changed and not cfg.checkpoint.allow_config_change:
    raise TrainingError("cannot resume: these changes would break the run's determinism: " + "; ".join(changed)
                        + ". Use a new run.dir, or set checkpoint.allow_config_change=True.")
  for c in changed:
    log.warning("resuming with a changed config: %s", c)


def _truncate_metrics(run_dir: str, step: int) -> None:
  """Drops metrics and sample rows past the resumed step (written by a run killed after its checkpoint)."""
  if jax.process_index() == 0:
    for name in ("metrics.jsonl", "samples.jsonl"):
      rundir.truncate_jsonl(rundir.join(run_dir, name), step)


def global_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """The global batch (the same numpy rows on every process) -> sharded arrays; each process
  copies only the slices its own devices hold."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}


def train(cfg: Config) -> TrainResult:
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.data.pipeline import build_pipeline
  from jaxtune.weights.hf_load import load_pretrained, resolve_model_dir

  t_start = time.perf_counter()
  is_main = jax.process_index() == 0
  mesh = mesh_lib.mesh_from_cfg(cfg.mesh)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  micro = cfg.train.batch_size // cfg.train.grad_accum
  if micro % batch_shards:
    raise ValueError(f"micro-batch {micro} (train.batch_size / train.grad_accum) is not divisible by "
                     f"mesh.data * mesh.fsdp = {batch_shards}")

  model_dir = str(resolve_model_dir(cfg.model.path))
  tokenizer = load_tokenizer(model_dir, cfg.data.chat_template)
  # Every process reads the same global batches and feeds only its own rows to its devices: the
  # batches depend on (data, seed, batch size) alone, never on the number of hosts or devices, so a
  # run is the same on any topology and may resume on another one.
  pipe = build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.train.seed)
  stats = pipe.stats.to_dict()
  if is_main:
    print(f"data: {stats['examples']} examples ({stats['loss_tokens']} loss tokens) from {stats['records']} "
          f"records; dropped {stats['dropped']} {stats.get('dropped_by_reason', {})}; "
          f"packing efficiency {stats.get('packing_efficiency', float('nan')):.3f}", flush=True)

  with jax.set_mesh(mesh):
    model = load_pretrained(model_dir, dtype=compute_dtype(cfg.model.dtype),
                            param_dtype=DTYPES[cfg.model.param_dtype], mesh=mesh, remat=cfg.model.remat,
                            attention_impl=cfg.model.attention)
    old_vocab = grow_for_tokenizer(model, tokenizer)  # special tokens data.chat_template needed were added
    if old_vocab is not None:
      if is_main:
        print(f"vocabulary {old_vocab} -> {model.config.vocab_size} for the added tokens "
              f"{getattr(tokenizer, 'jaxtune_added_tokens', {})}; new rows = the mean of the old ones", flush=True)
      if cfg.lora.rank > 0:
        log.warning("lora.rank > 0: the added tokens' embedding/lm_head rows stay at their mean initialisation "
                    "(LoRA trains no embeddings)")
    if cfg.lora.rank > 0:
      attach_lora(model, cfg, mesh)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    graphdef, state = init_state(model, tx)
    mcfg, hf_config = model.config, model.hf_config
    del model
    step_fn = jit_train_step(graphdef, tx, schedule, cfg.train.grad_accum, state_shardings(state),
                             mesh_lib.batch_sharding(mesh), skip_nonfinite=cfg.train.skip_nonfinite,
                             loss_chunk=cfg.train.loss_chunk)

    mgr = ckpt_lib.make_manager(cfg.run.dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    data_iter = pipe.iterator()
    done = ckpt_lib.good_steps(mgr, quarantine=is_main)
    if done:
      saved_meta = ckpt_lib.read_meta(mgr, done[0])
      _check_resume_config(cfg, saved_meta.get("config", {}))
      state, _ = ckpt_lib.restore(mgr, done[0], state, data_iter)
      _truncate_metrics(cfg.run.dir, done[0])
      if is_main:
        print(f"resumed from {ckpt_lib.checkpoint_dir(cfg.run.dir)}/{done[0]}", flush=True)
    _write_run_files(cfg, tokenizer, model_dir, hf_config)
    evaluate = None
    if cfg.train.eval_every > 0 and cfg.has_eval_data:
      from jaxtune.train.evaluate import make_evaluator
      eval_pipe = build_pipeline(cfg.data, tokenizer, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                                 split="eval")
      evaluate = make_evaluator(eval_pipe, graphdef, state_shardings(state), mesh_lib.batch_sharding(mesh),
                                loss_chunk=cfg.train.loss_chunk)
    sampler = None
    if cfg.eval.prompts:
      from jaxtune.train.prompt_eval import PromptSampler
      sampler = PromptSampler(cfg, tokenizer, model_dir)
      if is_main:
        print(f"eval prompts: {len(sampler.prompts)} from {cfg.eval.prompts}, up to {sampler.max_new_tokens} "
              f"new tokens each", flush=True)
    fpt = flops_per_token(param_count(state.params), mcfg.num_layers, mcfg.hidden_size, cfg.data.seq_len)
    try:
      state, last, stopped, samples = _run_steps(cfg, state, step_fn, data_iter, mgr, mesh, fpt, evaluate,
                                                 sampler, graphdef)
    finally:
      mgr.close()
  if is_main:
    print(f"{'stopped' if stopped else 'trained'} at step {int(jax.device_get(state.step))} after "
          f"{time.perf_counter() - t_start:.1f}s; checkpoints in {ckpt_lib.checkpoint_dir(cfg.run.dir)}", flush=True)
  return TrainResult(graphdef=graphdef, state=state, tokenizer=tokenizer, run_dir=cfg.run.dir, last_metrics=last,
                     stopped_early=stopped, samples=samples)


def _run_steps(cfg: Config, state: TrainState, step_fn, data_iter, mgr, mesh, fpt: float, evaluate=None,
               sampler=None, graphdef=None):
  """Steps from state.step to train.steps; returns (state, last logged row, stopped early, last samples).

  At each eval point (every train.eval_every steps, and the last step) `evaluate(state)` gives
  eval_loss and `sampler(model)` the eval prompts' samples and eval_exact_match."""
  is_main = jax.process_index() == 0
  batch_sh = mesh_lib.batch_sharding(mesh)
  meta = {"config": cfg.to_dict(), "jaxtune_version": jaxtune.__version__}
  start, total = int(jax.device_get(state.step)), cfg.train.steps
  writer = MetricsWriter(cfg.run.dir)
  bar = tqdm(total=total, initial=start, disable=not is_main, unit="step", dynamic_ncols=True)
  last: dict[str, Any] = {}
  timer = {"t": time.perf_counter(), "tokens": 0.0, "skipped": 0}
  samples: list[dict] | None = None

  def run_evals(step: int) -> dict[str, Any]:
    nonlocal samples
    t_eval = time.perf_counter()
    out: dict[str, Any] = {}
    if evaluate is not None:
      out.update(evaluate(state))
    if sampler is not None:
      from jaxtune.train.prompt_eval import samples_markdown
      metrics, samples = sampler(nnx.merge(graphdef, state.params, state.rest))
      out.update(metrics)
      writer.write_samples(step, samples, samples_markdown(samples, cfg.eval.log_samples))
      if is_main and "eval_exact_match" in metrics:
        tqdm.write(f"step {step}: eval exact match {metrics['eval_exact_match']:.1%} on {len(samples)} prompts")
    timer["t"] += time.perf_counter() - t_eval  # eval time is not training throughput
    return out

  def handle(step: int, metrics, extra: dict | None = None) -> None:
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (math.isfinite(m["loss"]) and m["finite"]):
      if not cfg.train.skip_nonfinite:
        raise TrainingError(f"step {step}: loss is {m['loss']} (grad norm {m['grad_norm']}); stopping. "
                            f"The last good checkpoint is kept under {ckpt_lib.checkpoint_dir(cfg.run.dir)}")
      timer["skipped"] += 1
      log.warning("step %d: non-finite loss %s; update skipped (train.skip_nonfinite)", step, m["loss"])
    if m["loss_tokens"] == 0:
      raise TrainingError(f"step {step}: the batch has no trained token (all-zero loss mask)")
    now = time.perf_counter()
    timer["tokens"] += m["tokens"]
    if step == start + 1 and is_main:
      tqdm.write(f"first step (compile + run) took {now - timer['t']:.1f}s; loss {m['loss']:.4f}")
    if step % cfg.train.log_every == 0 or step == total or step == start + 1 or extra:
      tps = timer["tokens"] / max(now - timer["t"], 1e-9)
      row = {"step": step, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
             "tokens_per_s": tps, "mfu": mfu(tps, fpt), "loss_tokens": int(m["loss_tokens"])}
      if timer["skipped"]:
        row["skipped_nonfinite"] = timer["skipped"]
      row.update(extra or {})
      writer.write(row)
      last.update(row)
      bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tps:,.0f}")
      timer["t"], timer["tokens"] = now, 0.0
    bar.update(1)

  pending, stopped, saved_at = None, False, start
  with _StopSignal() as stop:
    try:
      for step in range(start, total):
        state, metrics = step_fn(state, global_batch(next(data_iter), batch_sh))
        if pending is not None:
          handle(*pending)
        pending = (step + 1, metrics)
        eval_point = (cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0) or step + 1 == total
        if (evaluate is not None or sampler is not None) and eval_point:
          handle(*pending, run_evals(step + 1))
          pending = None
        periodic = cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0
        preempted = stop.signum is not None or mgr.reached_preemption(step + 1)
        if (periodic or preempted) and pending is not None:
          handle(*pending)  # never save a state whose step was not checked finite
          pending = None
        if preempted:
          break
        if periodic:
          writer.flush()  # a remote run dir: the logs of a saved step are uploaded before it is
          ckpt_lib.save(mgr, state, data_iter, meta)
          saved_at = step + 1
      if pending is not None:
        handle(*pending)
      step_now = int(jax.device_get(state.step))
      if step_now < total:
        stopped = True
        why = signal.Signals(stop.signum).name if stop.signum is not None else "a preemption notice"
        if is_main:
          tqdm.write(f"{why} received: saving step {step_now} and exiting")
      if step_now > saved_at or not ckpt_lib.good_steps(mgr):
        mgr.wait_until_finished()
        ckpt_lib.save(mgr, state, data_iter, meta, force=True)
      mgr.wait_until_finished()
    finally:
      bar.close()
      writer.close()
  return state, last, stopped, samples
