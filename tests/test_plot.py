"""curves.png: a real PNG of the expected size, written by training (at eval points and at the end) and by
`jaxtune plot` for several runs, with a reward-accuracy panel for DPO rows."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxtune import plot


def _image(path_or_bytes):
  import io
  img = Image.open(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
  assert img.format == "PNG"
  return img


def _drawn(img) -> bool:
  """More than a blank canvas: many distinct colours (lines, text, grid)."""
  px = np.asarray(img.convert("RGB")).reshape(-1, 3)
  return len(np.unique(px, axis=0)) > 50 and px.std() > 10


def _rows(n=20, dpo=False):
  rows = []
  for s in range(1, n + 1):
    r = {"step": s, "loss": 2.0 / s, "lr": 1e-3 * min(1, s / 5)}
    if s % 5 == 0:
      r["eval_loss"] = 2.5 / s
    if dpo:
      r["reward_accuracy"] = min(1.0, s / n)
      if s % 5 == 0:
        r["eval_reward_accuracy"] = min(1.0, 0.8 * s / n)
    rows.append(r)
  return rows


def test_render_sizes_and_panels():
  assert plot.figure_size(2) == (1000, 400) and plot.figure_size(3) == (1500, 400)
  img = _image(plot.render({"run": _rows()}))
  assert img.size == plot.figure_size(2) and _drawn(img)
  img = _image(plot.render({"sft": _rows(), "dpo": _rows(dpo=True)}))
  assert img.size == plot.figure_size(3) and _drawn(img)
  assert plot.panels_for({"a": _rows(dpo=True)}) == ["loss", "lr", "reward_accuracy"]


def test_training_writes_curves_png(tiny_run):
  # The shared run evaluates at steps 3 and 6: the picture is drawn then and at the end.
  path = os.path.join(tiny_run.run_abs, "curves.png")
  img = _image(path)
  assert img.size == plot.figure_size(2) and _drawn(img)
  rows = [json.loads(line) for line in open(os.path.join(tiny_run.run_abs, "metrics.jsonl"))]
  assert open(path, "rb").read() == plot.render({os.path.basename(tiny_run.run_abs): rows})  # drawn at the end


def test_plot_command_overlays_runs(tiny_run, tmp_path, capsys):
  from jaxtune import cli
  dpo = tmp_path / "dpo_run"
  dpo.mkdir()
  (dpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(dpo=True)))
  out = tmp_path / "both.png"
  assert cli.main(["plot", tiny_run.run_abs, str(dpo), "--out", str(out)]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  img = _image(str(out))
  assert img.size == plot.figure_size(3) and _drawn(img)
  assert cli.main(["plot", str(dpo)]) == 0  # one run: RUN_DIR/curves.png
  assert _image(str(dpo / "curves.png")).size == plot.figure_size(3)
  with pytest.raises(SystemExit) as e:
    cli.main(["plot", str(tmp_path / "nothing")])
  assert "nothing has no metrics.jsonl" in str(e.value.code)
