"""The parts of the training loop besides stepping, one hook each.

`training_steps` (jaxtune.train.loop) yields a `StepInfo` after dispatching each
step; the hooks run on it in order:

  EvalHook        eval loss and eval prompts at eval points (every train.eval_every, and the last step)
  HarnessHook     lm-evaluation-harness tasks (eval.harness_tasks) at the same points
  MetricsHook     reads each step's metrics one step late (the host never waits on the step it just
                  dispatched), stops the run on a non-finite loss (the NaN guard), writes metrics.jsonl /
                  TensorBoard rows every train.log_every, moves the progress bar
  CurvesHook      redraws RUN_DIR/curves.png at eval points and at the end
  CheckpointHook  saves every checkpoint.every steps, and at the end or on a stop signal

A hook that must see the current step checked (a checkpoint never holds a state whose
loss was not checked finite; an eval row carries that step's train metrics) says so
through `sync(info)`, and the loop has MetricsHook read that step at once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from typing import Any

import jax
from flax import nnx

from jaxtune import log as log_lib
from jaxtune import rundir
from jaxtune.errors import TrainingError
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.metrics import MetricsWriter, mfu

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepInfo:
  """One dispatched step: `step` steps are done once it finishes."""
  step: int
  state: Any
  metrics: dict[str, jax.Array]  # device values, read by MetricsHook
  last: bool  # the run's final step
  stop: bool = False  # a stop signal or preemption notice arrived: save and return after this step
  sync: bool = False  # a hook needs this step's metrics checked before it runs
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # joins this step's row (eval results)
  paused_s: float = 0.0  # time spent in hooks that is not training (evals)


class Hook:
  every: int = 0

  def due(self, info: StepInfo) -> bool:
    return bool(self.every) and info.step % self.every == 0

  def sync(self, info: StepInfo) -> bool:
    return False

  def __call__(self, info: StepInfo) -> None:
    pass

  def end(self, info: StepInfo | None) -> None:
    pass


class EvalPointHook(Hook):
  """A hook that runs at every eval point and on the last step, when it has work (`active`); the step's
  metrics wait for it."""

  @property
  def active(self) -> bool:
    return True

  def due(self, info: StepInfo) -> bool:
    return self.active and (super().due(info) or info.last)

  def sync(self, info: StepInfo) -> bool:
    return self.due(info)


class EvalHook(EvalPointHook):
  """eval_loss (and the objective's eval metrics) on held-out data, and eval-prompt samples with
  eval_exact_match, at every eval point; the last samples stay in `samples`."""

  def __init__(self, every: int, evaluate, sampler, graphdef, writer: MetricsWriter, log_samples: int):
    self.every, self.evaluate, self.sampler, self.graphdef = every, evaluate, sampler, graphdef
    self.writer, self.log_samples = writer, log_samples
    self.samples: list[dict] | None = None

  @property
  def active(self) -> bool:
    return self.evaluate is not None or self.sampler is not None

  def __call__(self, info: StepInfo) -> None:
    if not self.due(info):
      return
    t0 = time.perf_counter()
    if self.evaluate is not None:
      info.extra.update(self.evaluate(info.state))
    if self.sampler is not None:
      from jaxtune.train.prompt_eval import samples_markdown
      metrics, self.samples = self.sampler(nnx.merge(self.graphdef, info.state.params, info.state.rest))
      info.extra.update(metrics)
      self.writer.write_samples(info.step, self.samples, samples_markdown(self.samples, self.log_samples))
      if "eval_exact_match" in metrics:
        log.info("step %d: eval exact match %.1f%% on %d prompts", info.step, 100 * metrics["eval_exact_match"],
                 len(self.samples))
    info.paused_s += time.perf_counter() - t0


class HarnessHook(EvalPointHook):
  """lm-evaluation-harness tasks (eval.harness_tasks) on the current model at every eval point and the last
  step; their eval_<task>_<metric> values join that step's row."""

  def __init__(self, every: int, harness, graphdef):
    self.every, self.harness, self.graphdef = every, harness, graphdef

  @property
  def active(self) -> bool:
    return self.harness is not None

  def __call__(self, info: StepInfo) -> None:
    if not self.due(info):
      return
    t0 = time.perf_counter()
    metrics = self.harness(nnx.merge(self.graphdef, info.state.params, info.state.rest))
    info.extra.update(metrics)
    log.info("step %d: %s", info.step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    info.paused_s += time.perf_counter() - t0


class MetricsHook(Hook):
  """Reads step N's metrics after step N+1 is dispatched (or at once when a hook syncs on N), stops on a
  non-finite loss unless train.skip_nonfinite, writes a row every `log_every` steps (and at the first and
  last step, and with eval results), with tokens/s and MFU over the steps since the last row."""

  def __init__(self, writer: MetricsWriter, *, log_every: int, start: int, total: int, flops_per_token: float,
               skip_nonfinite: bool, checkpoint_dir: str):
    self.writer, self.log_every, self.start, self.total = writer, log_every, start, total
    self.fpt, self.skip_nonfinite, self.checkpoint_dir = flops_per_token, skip_nonfinite, checkpoint_dir
    self.pending: StepInfo | None = None
    self.last: dict[str, Any] = {}
    self.skipped = 0
    self._t, self._tokens, self._t_start = time.perf_counter(), 0.0, time.perf_counter()
    self.bar = log_lib.progress(total=total, initial=start, unit="step", desc="train")

  def __call__(self, info: StepInfo) -> None:
    self._t += info.paused_s  # eval time is not training throughput
    if self.pending is not None:
      self._read(self.pending)
      self.pending = None
    if info.sync or info.last or info.stop:
      self._read(info)
    else:
      self.pending = info

  def _read(self, info: StepInfo) -> None:
    m = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
    step = info.step
    if not (math.isfinite(m["loss"]) and m["finite"]):
      if not self.skip_nonfinite:
        raise TrainingError(f"step {step}: loss is {m['loss']} (grad norm {m['grad_norm']}); stopping. "
                            f"The last good checkpoint is kept under {self.checkpoint_dir}")
      self.skipped += 1
      log.warning("step %d: non-finite loss %s; update skipped (train.skip_nonfinite)", step, m["loss"])
    if m["loss_tokens"] == 0:
      raise TrainingError(f"step {step}: the batch has no trained token (all-zero loss mask)")
    now = time.perf_counter()
    self._tokens += m["tokens"]
    if step == self.start + 1:
      log.info("first step (compile + run) took %.1fs; loss %.4f", now - self._t_start, m["loss"])
    if step % self.log_every == 0 or step == self.total or step == self.start + 1 or info.extra:
      tps = self._tokens / max(now - self._t, 1e-9)
      row = {"step": step, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"], "tokens_per_s": tps,
             "mfu": mfu(tps, self.fpt), "loss_tokens": int(m["loss_tokens"])}
      row.update({k: v for k, v in m.items() if k not in ("loss", "lr", "grad_norm", "loss_tokens", "tokens",
                                                          "finite")})
      if self.skipped:
        row["skipped_nonfinite"] = self.skipped
      row.update(info.extra)
      self.writer.write(row)
      self.last.update(row)
      self.bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{tps:,.0f}")
      self._t, self._tokens = now, 0.0
    self.bar.update(1)

  def end(self, info: StepInfo | None) -> None:
    if self.pending is not None:
      self._read(self.pending)
      self.pending = None
    self.bar.close()


class CurvesHook(Hook):
  """RUN_DIR/curves.png (jaxtune.plot) from the run's metrics rows, rewritten at every eval point (after
  MetricsHook wrote that step's row) and at the end; process 0 only. A failure to draw is a warning: it
  never stops training."""

  def __init__(self, every: int, writer: MetricsWriter):
    self.every, self.writer = every, writer

  def __call__(self, info: StepInfo) -> None:
    if self.due(info) and not info.last:  # the last step is drawn by end(), once its row is written
      self._draw()

  def end(self, info: StepInfo | None) -> None:
    self._draw()

  def _draw(self) -> None:
    if not self.writer.enabled or not self.writer.history:
      return
    from jaxtune import plot
    try:
      plot.write_curves(self.writer.run_dir, self.writer.history)
    except Exception as e:  # noqa: BLE001 - a picture is not worth a training run
      log.warning("could not draw %s: %s: %s", rundir.CURVES, type(e).__name__, e)


class CheckpointHook(Hook):
  """Saves every `every` steps (after the step was checked finite); at the end (or on a stop signal) saves
  the final state unless it is saved already, and waits for async saves to finish. A save that fails (a
  full disk, a lost bucket) stops the run as soon as it is known (the step after its background write
  ended) with one TrainingError line naming the step and the reason; the previous checkpoint stays."""

  def __init__(self, manager, every: int, data_iter, meta: dict, writer: MetricsWriter, start: int):
    self.manager, self.every, self.data_iter, self.meta, self.writer = manager, every, data_iter, meta, writer
    self.saved_at = start
    self.pending: int | None = None  # the step of the async save in flight

  def sync(self, info: StepInfo) -> bool:
    return self.due(info)

  def _settle(self, *, block: bool) -> None:
    """Raises the failure of the save in flight once it has ended (at once with `block`)."""
    if self.pending is not None and (block or not self.manager.is_saving_in_progress()):
      step, self.pending = self.pending, None
      ckpt_lib.wait(self.manager, step)

  def _save(self, info: StepInfo, *, force: bool = False) -> None:
    self._settle(block=True)
    self.writer.flush()  # a remote run dir: the logs of a saved step are uploaded before it is
    ckpt_lib.save(self.manager, info.state, self.data_iter, self.meta, force=force)
    self.pending = self.saved_at = info.step

  def __call__(self, info: StepInfo) -> None:
    self._settle(block=False)
    if self.due(info) and not info.stop:
      self._save(info)

  def end(self, info: StepInfo | None) -> None:
    if info is not None and (info.step > self.saved_at or not ckpt_lib.good_steps(self.manager)):
      self._save(info, force=True)
    self._settle(block=True)
    ckpt_lib.wait(self.manager, None)


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks once per step (a second Ctrl-C stops at once)."""

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
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else "a preemption notice"
