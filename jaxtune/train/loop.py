"""The training loop: `train(cfg)` = pre-flight checks and the run-dir lock (jaxtune.train.preflight,
jaxtune.train.lock), setup, then `training_steps` driving the hooks.

`training_steps` dispatches one step at a time and yields a `StepInfo` right after
each dispatch, before the host reads anything back; the hooks (jaxtune.train.hooks)
then log, evaluate and checkpoint. SIGTERM/SIGINT and a JAX/Orbax preemption notice
finish the current step, save synchronously and return normally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Callable, Iterator

import jax
from flax import nnx

from jaxtune.config import Config
from jaxtune.mesh import global_batch
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train import lock, preflight
from jaxtune.train.hooks import (CheckpointHook, CurvesHook, EvalHook, HarnessHook, Hook, MetricsHook, StepInfo,
                                 StopSignal)
from jaxtune.train.metrics import MetricsWriter
from jaxtune.train.setup import Run, build
from jaxtune.train.state import TrainState

log = logging.getLogger(__name__)


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


def training_steps(state, step_fn: Callable, batches: Iterator, sharding, start: int, total: int,
                   stop: Callable[[int], bool], step_args: tuple = ()) -> Iterator[StepInfo]:
  """Dispatches steps start+1..total and yields each one's StepInfo before reading anything back; ends
  early after the step at which `stop(step)` is true."""
  for step in range(start, total):
    state, metrics = step_fn(state, global_batch(next(batches), sharding), *step_args)
    info = StepInfo(step=step + 1, state=state, metrics=metrics, last=step + 1 == total, stop=stop(step + 1))
    yield info
    if info.stop:
      return


def run_hooks(run: Run, hooks: list[Hook], stop: Callable[[int], bool]) -> StepInfo | None:
  """Drives `hooks` over the run's steps; returns the last step's info (None when nothing was left to do)."""
  info = None
  for info in training_steps(run.state, run.step_fn, run.data_iter, run.batch_sharding, run.start,
                             run.cfg.train.steps, stop, run.step_args):
    info.sync = info.stop or any(h.sync(info) for h in hooks)
    for h in hooks:
      h(info)
  return info


def _sinks(cfg: Config) -> list:
  """Metrics destinations besides metrics.jsonl and TensorBoard: W&B when log.wandb_project is set."""
  if not cfg.log.wandb_project:
    return []
  from jaxtune.train.wandb_sink import WandbSink
  return [WandbSink(cfg, cfg.run.dir)]


def train(cfg: Config) -> TrainResult:
  """Pre-flight checks, the run-dir lock, then the run (see the module docstring)."""
  t_start = time.perf_counter()
  preflight.check(cfg)
  with lock.hold(cfg.run.dir):
    return _train(cfg, t_start)


def _train(cfg: Config, t_start: float) -> TrainResult:
  run = build(cfg)
  if run.start >= cfg.train.steps:
    log.warning("the run in %s is already at step %d and train.steps is %d: nothing to train (raise train.steps to "
                "go on)", cfg.run.dir, run.start, cfg.train.steps)
  with jax.set_mesh(run.mesh):
    writer = MetricsWriter(cfg.run.dir, make_sinks=lambda: _sinks(cfg))
    metrics = MetricsHook(writer, log_every=cfg.train.log_every, start=run.start, total=cfg.train.steps,
                          flops_per_token=run.flops_per_token, skip_nonfinite=cfg.train.skip_nonfinite,
                          checkpoint_dir=ckpt_lib.checkpoint_dir(cfg.run.dir))
    evals = EvalHook(cfg.train.eval_every, run.evaluate, run.sampler, run.graphdef, writer, cfg.eval.log_samples)
    checkpoints = CheckpointHook(run.manager, cfg.checkpoint.every, run.data_iter, run.meta, writer, run.start)
    harness = HarnessHook(cfg.train.eval_every, run.harness, run.graphdef)
    curves = CurvesHook(cfg.train.eval_every, writer)
    hooks: list[Hook] = [evals, harness, metrics, curves, checkpoints]
    last = None
    try:
      with StopSignal() as signals:
        stop = lambda step: signals.signum is not None or run.manager.reached_preemption(step)  # noqa: E731
        last = run_hooks(run, hooks, stop)
        metrics.end(last)
        curves.end(last)
        stopped = last is not None and last.step < cfg.train.steps
        if stopped:
          log.info("%s received: saving step %d and exiting", signals.name, last.step)
        checkpoints.end(last)
    except BaseException:
      metrics.bar.close()
      with contextlib.suppress(Exception):  # the error on its way out says what failed
        run.manager.close()
      with contextlib.suppress(Exception):
        writer.close()
      raise
    metrics.bar.close()
    run.manager.close()
    writer.close()
  state = last.state if last is not None else run.state
  step = last.step if last is not None else run.start
  log.info("%s at step %d after %.1fs; checkpoints in %s", "stopped" if stopped else "trained", step,
           time.perf_counter() - t_start, ckpt_lib.checkpoint_dir(cfg.run.dir))
  return TrainResult(graphdef=run.graphdef, state=state, tokenizer=run.tokenizer, run_dir=cfg.run.dir,
                     last_metrics=metrics.last, stopped_early=stopped, samples=evals.samples)
