"""Metrics out of the loop: `metrics.jsonl` rows (process 0 only) and MFU."""

from __future__ import annotations

import math
from typing import Any

import jax

from jaxtune import io, rundir

# Dense bf16 peak FLOP/s per device (chip), from the vendors' spec sheets.
PEAK_FLOPS = {
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """Peak FLOP/s of one device, or None when unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "").lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return None


def flops_per_token(n_params: int, num_layers: int, hidden: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the matmuls plus causal attention (12 * L * D * T / 2)."""
  return 6.0 * n_params + 6.0 * num_layers * hidden * seq_len


def mfu(tokens_per_s: float, fpt: float) -> float | None:
  peak = peak_flops_per_device()
  if peak is None or not math.isfinite(tokens_per_s):
    return None
  return tokens_per_s * fpt / (peak * jax.device_count())


class MetricsWriter:
  """One JSON object per logged step in RUN_DIR/metrics.jsonl, eval-prompt samples in samples.jsonl,
  and the same scalars as TensorBoard events in RUN_DIR/tensorboard/ (process 0 only). RUN_DIR may
  be remote (gs://...): logs and events are then uploaded every few seconds and on flush/close
  (see jaxtune.rundir). `sinks` are further destinations of the same rows and samples (W&B), built on
  process 0 only by `make_sinks()`. `history` holds every row of the run, the resumed run's earlier ones
  included (for the curves)."""

  def __init__(self, run_dir: str, make_sinks=None):
    self.enabled = jax.process_index() == 0
    self.run_dir = run_dir
    self._metrics = self._samples = self._tb_dir = self._tb = None
    self.sinks: list[Any] = []
    self.history: list[dict[str, Any]] = []
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.history = rundir.read_metrics(run_dir)
      self._metrics = io.JsonlLog(rundir.path(run_dir, rundir.METRICS))
      self._tb_dir = io.LocalDir(rundir.path(run_dir, rundir.TENSORBOARD))
      self._tb = SummaryWriter(self._tb_dir.path)
      self.sinks = list(make_sinks()) if make_sinks is not None else []

  def write(self, row: dict[str, Any]) -> None:
    if self._tb is None:
      return
    self._metrics.append(row)
    self.history.append(row)
    for sink in self.sinks:
      sink.write(row)
    step = int(row["step"])
    for k, v in row.items():
      if k != "step" and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
        self._tb.add_scalar(f"train/{k}" if not k.startswith("eval") else f"eval/{k}", v, step)
    self._tb.flush()
    self._tb_dir.sync()

  def write_samples(self, step: int, samples: list[dict], table: str | None = None) -> None:
    """Eval-prompt samples: every one to RUN_DIR/samples.jsonl, `table` (markdown) to TensorBoard."""
    if self._tb is None:
      return
    if self._samples is None:  # created on the first samples: a run without eval.prompts has no file
      self._samples = io.JsonlLog(rundir.path(self.run_dir, rundir.SAMPLES))
    self._samples.append(*({"step": step, **s} for s in samples))
    for sink in self.sinks:
      sink.write_samples(step, samples)
    if table:
      self._tb.add_text("eval/samples", table, step)
      self._tb.flush()
      self._tb_dir.sync()

  def flush(self) -> None:
    """Uploads everything now (a remote run dir); call before a checkpoint save so the logs of a
    saved step are never lost."""
    if self._tb is None:
      return
    for f in (self._metrics, self._samples):
      if f is not None:
        f.flush()
    self._tb.flush()
    self._tb_dir.sync(force=True)

  def close(self) -> None:
    if self._tb is not None:
      for sink in self.sinks:
        sink.close()
      self._tb.close()
      self._tb_dir.close()
      for f in (self._metrics, self._samples):
        if f is not None:
          f.close()
      self._metrics = self._samples = self._tb = None
