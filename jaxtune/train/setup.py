"""Everything a run needs before its first step, built from a Config: the `Run`.

mesh -> tokenizer -> the objective's data -> the starting model (sharded) -> the
objective's extra models (reference, teacher) -> optimizer state -> the jitted step
-> Orbax manager, resumed from the latest good checkpoint -> run files -> evaluators.

Every process reads the same global batches and feeds only its own rows to its
devices: the batches depend on (data, seed, batch size) alone, never on the number
of hosts or devices, so a run is the same on any topology and may resume on another.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable

import jax
from flax import nnx

import jaxtune
from jaxtune import io
from jaxtune import mesh as mesh_lib
from jaxtune import rundir
from jaxtune.config import Config, compute_dtype, determinism_keys, jnp_dtype, quantize_format
from jaxtune.data.pipeline import LAYOUT
from jaxtune.errors import ConfigError, TrainingError
from jaxtune.models.lora import attach_lora
from jaxtune.models.resize import check_tokenizer_fits, grow_for_tokenizer
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train import objectives
from jaxtune.train.metrics import flops_per_token
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import TrainState, init_state, param_count, state_shardings
from jaxtune.train.step import jit_train_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
  """A run ready to step: its state is at `start` (0, or the resumed step)."""
  cfg: Config
  mesh: jax.sharding.Mesh
  tokenizer: Any
  model_dir: str
  objective: objectives.Objective
  pipeline: Any  # the objective's train pipeline
  data_iter: Any  # its checkpointable iterator
  graphdef: nnx.GraphDef
  state: TrainState
  frozen: Any  # the objective's extra models (None for SFT), passed to every step
  step_fn: Callable
  manager: Any  # orbax CheckpointManager
  start: int
  meta: dict[str, Any]  # saved with every checkpoint
  flops_per_token: float
  evaluate: Callable | None = None  # state -> {"eval_loss", ...}
  sampler: Any = None  # model -> (metrics, samples), for eval.prompts
  harness: Any = None  # model -> {eval_<task>_<metric>}, for eval.harness_tasks

  @property
  def batch_sharding(self):
    return mesh_lib.batch_sharding(self.mesh)

  @property
  def step_args(self) -> tuple:
    """What the step takes after (state, batch)."""
    return (self.frozen,) if self.objective.has_frozen else ()


def check_batch(cfg: Config, mesh) -> None:
  """The micro-batch divides over the mesh's batch axes and the sequence over its context axis (`mesh`: a
  Mesh or its {axis: size})."""
  shape = getattr(mesh, "shape", mesh)
  batch_shards = shape["data"] * shape["fsdp"]
  micro = cfg.train.batch_size // cfg.train.grad_accum
  if micro % batch_shards:
    raise ConfigError(f"config key 'train.batch_size': the micro-batch {micro} (train.batch_size / "
                      f"train.grad_accum) is not divisible by mesh.data * mesh.fsdp = {batch_shards}")
  context = shape.get(mesh_lib.RULES["seq"], 1)
  if cfg.data.seq_len % context:
    raise ConfigError(f"config key 'data.seq_len': {cfg.data.seq_len} is not divisible by mesh.context = {context} "
                      "(each device holds an equal slice of every row)")


SHOWN_DROPS = 5  # dropped records `jaxtune train` names (file:line, reason); `jaxtune data stats` lists more


def log_dropped(stats: dict) -> None:
  """Names the first few dropped records (file:line, reason, detail), as `data stats` does."""
  samples = stats.get("samples") or []
  if not samples:
    return
  shown = "; ".join(f"{s['where']}: {s['reason']}" + (f" ({s['detail'][:120]})" if s.get("detail") else "")
                    for s in samples[:SHOWN_DROPS])
  more = stats.get("dropped", len(samples)) - min(len(samples), SHOWN_DROPS)
  log.warning("data: dropped records, e.g. %s%s (jaxtune data stats lists them)", shown,
              f"; and {more} more" if more > 0 else "")


def check_resume_config(cfg: Config, meta: dict) -> None:
  """Refuses a resume whose config changed a key that decides which tokens the run sees, whose data
  layout (how examples become rows) differs from the one the checkpoint was trained with, or whose decoder
  layers are laid out otherwise (model.scan_layers; runs from before that key were unrolled)."""
  saved = json.loads(json.dumps(meta.get("config", {})))  # tuples and lists alike
  saved_scan = bool(saved.get("model", {}).get("scan_layers", False)) if saved else cfg.model.scan_layers
  if saved_scan != cfg.model.scan_layers:
    raise TrainingError(f"cannot resume: the checkpoints hold {'scanned' if saved_scan else 'unrolled'} decoder "
                        f"layers and model.scan_layers={cfg.model.scan_layers}; set "
                        f"--config.model.scan_layers={saved_scan} to resume this run")
  now = json.loads(json.dumps(cfg.to_dict()))
  changed = [f"{sec}.{k}: {saved[sec][k]!r} -> {now[sec][k]!r}" for sec, k in determinism_keys()
             if sec in saved and k in saved[sec] and saved[sec][k] != now[sec][k]]
  if meta.get("data_layout", "first-fit-v0") != LAYOUT:
    changed.append(f"the data layout: {meta.get('data_layout', 'first-fit-v0')!r} -> {LAYOUT!r} (this jaxtune packs "
                   "rows differently)")
  if changed and not cfg.checkpoint.allow_config_change:
    raise TrainingError("cannot resume: these changes would break the run's determinism: " + "; ".join(changed)
                        + ". Use a new run.dir, or set checkpoint.allow_config_change=True.")
  for c in changed:
    log.warning("resuming with a changed config: %s", c)


def build(cfg: Config) -> Run:
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.weights.hf_load import load_pretrained, model_config, read_hf_config, resolve_model_dir

  is_main = jax.process_index() == 0
  mesh = mesh_lib.mesh_from_cfg(cfg.mesh)
  check_batch(cfg, mesh)
  objective = objectives.for_config(cfg)
  model_dir = str(resolve_model_dir(cfg.model.path))
  tokenizer = load_tokenizer(model_dir, cfg.data.chat_template)
  check_tokenizer_fits(tokenizer, model_config(read_hf_config(model_dir), f"{model_dir}/config.json").vocab_size)
  if cfg.log.wandb_project and is_main:
    from jaxtune.train.wandb_sink import require_wandb
    require_wandb()
  harness = None
  if cfg.eval.harness_tasks:  # task names are checked before any data or weights load
    from jaxtune.harness import HarnessEval
    harness = HarnessEval(cfg, tokenizer, model_dir, io.read_json(io.join(model_dir, "config.json")))
    log.info("harness tasks at eval points: %s", ", ".join(harness.tasks))
  pipeline = objective.pipeline(cfg, tokenizer, "train")
  stats = pipeline.stats.to_dict()
  log.info("data: %s examples (%s loss tokens) from %s records; dropped %s %s; packing efficiency %.3f",
           stats["examples"], stats["loss_tokens"], stats["records"], stats["dropped"],
           stats.get("dropped_by_reason", {}), stats.get("packing_efficiency", float("nan")))
  log_dropped(stats)
  eval_pipeline = None
  if cfg.train.eval_every > 0 and cfg.has_eval_data:
    eval_pipeline = objective.pipeline(cfg, tokenizer, "eval")

  with jax.set_mesh(mesh):
    model = load_pretrained(model_dir, dtype=compute_dtype(cfg.model.dtype), param_dtype=jnp_dtype(cfg.model.param_dtype),
                            mesh=mesh, remat=cfg.model.remat, attention_impl=cfg.model.attention,
                            scan_layers=cfg.model.scan_layers, quantize=quantize_format(cfg))
    old_vocab = grow_for_tokenizer(model, tokenizer)  # special tokens data.chat_template needed were added
    if old_vocab is not None:
      log.info("vocabulary %d -> %d for the added tokens %s; new rows = the mean of the old ones", old_vocab,
               model.config.vocab_size, getattr(tokenizer, "jaxtune_added_tokens", {}))
      if cfg.lora.rank > 0:
        log.warning("lora.rank > 0: the added tokens' embedding/lm_head rows stay at their mean initialisation "
                    "(LoRA trains no embeddings)")
    if cfg.lora.rank > 0:
      attach_lora(model, cfg.lora, seed=cfg.train.seed, mesh=mesh)
    objective, frozen = objective.prepare(objectives.PrepareContext(
        cfg=cfg, model=model, mesh=mesh, tokenizer=tokenizer, pipelines={"train": pipeline, "eval": eval_pipeline}))
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    graphdef, state = init_state(model, tx)
    mcfg, hf_config = model.config, model.hf_config
    del model
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None
    step_fn = jit_train_step(graphdef, tx, schedule, cfg.train.grad_accum, state_shardings(state),
                             mesh_lib.batch_sharding(mesh), skip_nonfinite=cfg.train.skip_nonfinite,
                             objective=objective, frozen_shardings=frozen_sh)

    manager = ckpt_lib.make_manager(cfg.run.dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    data_iter = pipeline.iterator()
    resumed = ckpt_lib.restore_latest(manager, state, data_iter, check_meta=lambda m: check_resume_config(cfg, m),
                                      quarantine=is_main)
    if resumed is not None:
      state, _, step = resumed
      log.info("resumed from %s/%d", ckpt_lib.checkpoint_dir(cfg.run.dir), step)
    if is_main:  # rows logged after the checkpoint resumed from (all of them when starting over) go
      rundir.truncate_logs(cfg.run.dir, resumed[2] if resumed is not None else 0)
    if is_main:
      rundir.write_config(cfg.run.dir, cfg.to_dict(), jaxtune.__version__)
      rundir.write_hf_source(cfg.run.dir, model_dir, tokenizer, hf_config)

    evaluate = None
    if eval_pipeline is not None:
      from jaxtune.train.evaluate import make_evaluator
      evaluate = make_evaluator(eval_pipeline, graphdef, state_shardings(state), mesh_lib.batch_sharding(mesh),
                                objective=objective, frozen=frozen, frozen_shardings=frozen_sh)
  sampler = None
  if cfg.eval.prompts:
    from jaxtune.train.prompt_eval import PromptSampler
    sampler = PromptSampler(cfg, tokenizer, model_dir)
    log.info("eval prompts: %d from %s, up to %d new tokens each", len(sampler.prompts), cfg.eval.prompts,
             sampler.max_new_tokens)
  fpt = flops_per_token(param_count(state.params), mcfg.num_layers, mcfg.hidden_size, cfg.data.seq_len)
  return Run(cfg=cfg, mesh=mesh, tokenizer=tokenizer, model_dir=model_dir, objective=objective, pipeline=pipeline,
             data_iter=data_iter, graphdef=graphdef, state=state, frozen=frozen, step_fn=step_fn, manager=manager,
             start=int(jax.device_get(state.step)),
             meta={"config": cfg.to_dict(), "jaxtune_version": jaxtune.__version__, "data_layout": LAYOUT},
             flops_per_token=fpt, evaluate=evaluate, sampler=sampler, harness=harness)
