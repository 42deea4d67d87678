"""Training curves of one or more runs as a PNG: loss (train, and eval at eval points), learning rate, and for
DPO runs the reward accuracy, side by side, one colour per run, by step.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend), at a fixed
size per panel: `figure_size(n_panels)` pixels. Training writes RUN_DIR/curves.png at each eval point and at
the end; `jaxtune plot RUN_DIR [RUN_DIR ...]` overlays runs.
"""

from __future__ import annotations

import io as _io
import os
from typing import Any, Sequence

from jaxtune import io, rundir
from jaxtune.errors import MissingPathError

PANEL_W_IN, PANEL_H_IN, DPI = 5.0, 4.0, 100
# panel: (title, y label, [(metrics key, line style, legend suffix)])
PANELS = {
    "loss": ("loss", "loss", [("loss", "-", "train"), ("eval_loss", "o--", "eval")]),
    "lr": ("learning rate", "lr", [("lr", "-", "")]),
    "reward_accuracy": ("reward accuracy (DPO)", "fraction", [("reward_accuracy", "-", "train"),
                                                             ("eval_reward_accuracy", "o--", "eval")]),
}


def figure_size(n_panels: int) -> tuple[int, int]:
  """(width, height) in pixels of a picture with `n_panels` panels."""
  return int(PANEL_W_IN * n_panels * DPI), int(PANEL_H_IN * DPI)


def panels_for(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
  """loss and lr always; reward accuracy once any run has it."""
  keys = {k for rows in runs.values() for r in rows for k in r}
  return ["loss", "lr"] + (["reward_accuracy"] if keys & {"reward_accuracy", "eval_reward_accuracy"} else [])


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  pts = {}
  for r in rows:  # a step logged twice (a resumed run) keeps its last value
    v = r.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and "step" in r:
      pts[int(r["step"])] = float(v)
  steps = sorted(pts)
  return steps, [pts[s] for s in steps]


def render(runs: dict[str, list[dict[str, Any]]]) -> bytes:
  """The PNG of `runs` ({label: metrics rows})."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names = panels_for(runs)
  fig = Figure(figsize=(PANEL_W_IN * len(names), PANEL_H_IN), dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(names), squeeze=False)[0]
  colors = [f"C{i % 10}" for i in range(len(runs))]
  for ax, name in zip(axes, names):
    title, ylabel, lines = PANELS[name]
    for (label, rows), color in zip(runs.items(), colors):
      for key, style, suffix in lines:
        steps, values = _series(rows, key)
        if steps:
          legend = " ".join(x for x in (label if len(runs) > 1 else "", suffix) if x)
          ax.plot(steps, values, style, color=color, markersize=3, label=legend or None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if name == "lr":
      ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if ax.get_legend_handles_labels()[1]:
      ax.legend(fontsize=8)
  buf = _io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI)
  return buf.getvalue()


def write_curves(run_dir: str, rows: list[dict[str, Any]], out: str | None = None) -> str:
  """RUN_DIR/curves.png (or `out`) of one run's rows; returns the path."""
  out = out or rundir.path(run_dir, rundir.CURVES)
  io.write_bytes(out, render({_label(run_dir): rows}))
  return out


def plot_runs(run_dirs: Sequence[str], out: str | None = None) -> str:
  """`jaxtune plot`: the runs' curves overlaid in `out` (default: RUN_DIR/curves.png for one run,
  ./curves.png for several); returns the path."""
  runs = {}
  for d in run_dirs:
    if not io.exists(rundir.path(d, rundir.METRICS)):
      raise MissingPathError(f"{d} has no {rundir.METRICS}: not a jaxtune run dir, or no step was logged yet")
    runs[_unique(runs, _label(d))] = rundir.read_metrics(d)
  out = out or (rundir.path(run_dirs[0], rundir.CURVES) if len(run_dirs) == 1 else rundir.CURVES)
  io.write_bytes(out, render(runs))
  return out


def _label(run_dir: str) -> str:
  return os.path.basename(os.path.normpath(run_dir)) or run_dir


def _unique(taken: dict, label: str) -> str:
  n, out = 1, label
  while out in taken:
    n += 1
    out = f"{label} ({n})"
  return out
