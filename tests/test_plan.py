"""`jaxtune plan`: per-device memory before launch, its exit status, its suggestions and its --json.

The compiled path runs here on a small model (the 8 fake CPU devices of conftest.py); the recipes' plans
(the analytic path) are in test_recipes.py; the plan against a real step's measured peak runs the bench
script in a fresh process (bench/plan_vs_measured.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxtune import cli
from jaxtune import plan as plan_lib
from jaxtune.models.presets import hf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("plan_model")
  hf = hf_config("meta-llama/Llama-3.2-1B-Instruct")
  hf.update(SHAPE)
  (d / "config.json").write_text(json.dumps(hf))
  return str(d)


def run_plan(capsys, model_dir, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of `jaxtune plan` on configs/tiny.py with this model, float32, no remat."""
  argv = ["plan", "--config", os.path.join(REPO, "configs", "tiny.py"), f"--config.model.path={model_dir}",
          "--config.model.remat=none", "--config.train.batch_size=8", *args]
  try:
    status = cli.main(argv)
  except SystemExit as e:  # a UserError: one `error: ...` line, exit status 1
    status, err = 1, str(e.code)
    out = capsys.readouterr()
    return status, out.out, out.err + err
  out = capsys.readouterr()
  return status, out.out, out.err


def roomy_cfg(model_dir):
  from jaxtune.config import Config
  cfg = Config.from_dict(cli.load_config_file(os.path.join(REPO, "configs", "tiny.py")))
  return plan_lib.with_keys(cfg, {"model.path": model_dir, "model.remat": "none", "train.batch_size": 8,
                                  "mesh.fsdp": 2})


@pytest.fixture(scope="module")
def roomy(model_dir):
  """The compiled plan of the small model on 2 devices (fsdp 2) with room to spare."""
  return plan_lib.plan(roomy_cfg(model_dir), plan_lib.Hardware(2, 100e9))


def test_fits_json_shape(capsys, model_dir, roomy):
  status, out, _ = run_plan(capsys, model_dir, "--devices", "2", "--hbm-gb", "100", "--config.mesh.fsdp=2", "--json")
  assert status == 0
  d = json.loads(out)
  assert set(d) == {"fits", "source", "devices", "topology", "mesh", "hbm_bytes", "budget_bytes", "headroom",
                    "per_device_bytes", "suggestions"}
  assert d["fits"] is True and d["source"] == "compiled" and d["devices"] == 2 and d["suggestions"] == []
  assert d["mesh"] == {"data": 1, "fsdp": 2, "context": 1, "tensor": 1}
  m = d["per_device_bytes"]
  assert m["total"] == pytest.approx(m["params"] + m["optimizer"] + m["grads"] + m["activations"])
  assert m == pytest.approx(roomy.to_dict()["per_device_bytes"])
  D, L = SHAPE["hidden_size"], SHAPE["num_hidden_layers"]
  matrices = 2 * SHAPE["vocab_size"] * D + L * (D * (2 * 4 * 32 + 2 * 2 * 32) + 3 * D * SHAPE["intermediate_size"])
  norms = (2 * L + 1) * D
  assert m["params"] == 4 * (matrices / 2 + norms)  # float32; matrices split over fsdp=2, norms replicated
  assert m["optimizer"] == pytest.approx(2 * m["params"], rel=0.01) and m["grads"] == pytest.approx(m["params"])
  assert m["activations"] > 0


def test_text_output_and_estimate_label(capsys, model_dir):
  status, out, _ = run_plan(capsys, model_dir, "--devices", "1", "--hbm-gb", "100")
  assert status == 0 and "compiled train step" in out and "activations+temporaries" in out
  status, out, _ = run_plan(capsys, model_dir, "--devices", "1", "--hbm-gb", "100", "--estimate")
  assert status == 0 and "analytic estimate" in out and "activations (estimate)" in out


def test_does_not_fit_suggests_a_change_that_fits(capsys, model_dir, roomy):
  """HBM between the plan with remat=none and with remat=full: full remat is suggested, and every
  suggestion, applied, fits."""
  full = plan_lib.plan(plan_lib.with_keys(roomy_cfg(model_dir), {"model.remat": "full"}), roomy.hardware)
  assert full.memory.total < 0.9 * roomy.memory.total, (full.memory, roomy.memory)
  hbm_gb = (full.memory.total + roomy.memory.total) / 2 / plan_lib.HEADROOM / 1e9
  status, out, err = run_plan(capsys, model_dir, "--devices", "2", "--config.mesh.fsdp=2", "--hbm-gb", str(hbm_gb))
  assert status == cli.PLAN_DOES_NOT_FIT == 4
  assert err.count("\n") == 1 and err.startswith("error: does not fit: ")
  tries = [line.split("try: ", 1)[1] for line in out.splitlines() if "try: " in line]
  assert tries, out
  assert any(t.startswith("--config.model.remat=full:") for t in tries), tries
  for t in tries:
    flags = t.split(":", 1)[0].split()
    status, out, _ = run_plan(capsys, model_dir, "--devices", "2", "--config.mesh.fsdp=2", "--hbm-gb", str(hbm_gb),
                              *flags)
    assert status == 0, f"applying {flags} still does not fit:\n{out}"


def test_state_too_big_suggests_more_devices(capsys, model_dir, roomy):
  hbm_gb = 1.1 * roomy.memory.total / plan_lib.HEADROOM / 1e9  # fsdp=2 on 2 devices fits, one device does not
  status, out, _ = run_plan(capsys, model_dir, "--devices", "1", "--hbm-gb", str(hbm_gb))
  assert status == 4
  assert "try: --config.mesh.fsdp=2 --devices 2: " in out, out


@pytest.mark.parametrize("devices,msg", [("abc", "--devices 'abc'"), ("0", "--devices '0'"),
                                         ("3", "uses 1 devices, the plan is for 3")])
def test_bad_devices_is_one_clear_error(capsys, model_dir, devices, msg):
  status, _, err = run_plan(capsys, model_dir, "--devices", devices, "--hbm-gb", "10")
  assert status == 1 and msg in err and err.startswith("error: ") and err.count("\n") == 0


def test_needs_hbm_without_a_topology(capsys, model_dir):
  status, _, err = run_plan(capsys, model_dir, "--devices", "1")
  assert status == 1 and "--hbm-gb" in err


def test_plan_within_20_percent_of_a_measured_step():
  """The compiled plan of bench/plan_vs_measured.py's model against the peak resident memory of a real step
  (a fresh process: its RSS is the step's own)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "plan_vs_measured.py"), "--one", "base"],
                     capture_output=True, text=True, env=env, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  line = next(line for line in p.stdout.splitlines() if line.startswith("RESULT"))
  vals = dict(kv.split("=") for kv in line.split("#")[0].split()[2:])
  assert float(vals["measured_mb"]) > 300  # the state is most of it: a real step ran
  assert 0.8 <= float(vals["ratio"]) <= 1.2, line
