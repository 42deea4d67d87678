"""Checkpoints resume exactly, survive SIGKILL/SIGTERM, skip bad step dirs and never keep a NaN state."""

import os
import signal
import time

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.export import restore_model
from jaxtune.models import ModelConfig, build_model
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.state import init_state
from tests.helpers import cli
from tests.helpers.hf_models import make_tiny_chat_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("resume")
  model_dir, tok = make_tiny_chat_model(tmp, "llama")
  a, b = tmp / "a.jsonl", tmp / "b.jsonl"
  a.write_text("\n".join(cli.chat_records(40, seed=0)) + "\n")
  b.write_text("\n".join(cli.chat_records(40, seed=3)) + "\n")
  sources = f"({{'path': '{a}', 'format': 'messages', 'weight': 3.0}}, {{'path': '{b}', 'format': 'auto', 'weight': 1.0}})"
  return tmp, model_dir, sources


def args(setup, run_dir, *extra):
  _, model_dir, sources = setup
  return ("train", "--config=configs/tiny.py", f"--config.model.path={model_dir}", f"--config.data.train={sources}",
          "--config.data.packing=True", "--config.train.log_every=1", f"--config.run.dir={run_dir}", *extra)


def wait_for(pred, proc, timeout=300):
  t0 = time.time()
  while not pred():
    assert proc.poll() is None, "the run ended before the test could interrupt it"
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.05)


def params_of(run_dir):
  model, _, step = restore_model(run_dir)
  return step, [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_sigkill_then_resume_is_bit_exact(setup):
  tmp = setup[0]
  steps = ("--config.train.steps=40", "--config.checkpoint.every=3")
  ref, run = str(tmp / "ref"), str(tmp / "killed")
  cli.jaxtune(*args(setup, ref, *steps))
  proc = cli.start(*args(setup, run, *steps), log_path=str(tmp / "killed.log"))
  wait_for(lambda: os.path.exists(os.path.join(run, "checkpoints", "6", "_CHECKPOINT_METADATA")), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = cli.jaxtune(*args(setup, run, *steps))
  assert "resumed from" in resumed.stdout
  step_a, pa = params_of(ref)
  step_b, pb = params_of(run)
  assert step_a == step_b == 40
  for x, y in zip(pa, pb):
    assert np.array_equal(x, y)
  la = {r["step"]: r["loss"] for r in cli.metrics(ref)}
  lb = {r["step"]: r["loss"] for r in cli.metrics(run)}
  assert la == lb and len(la) == 40


def test_sigterm_saves_and_exits_zero(setup):
  run = str(setup[0] / "term")
  proc = cli.start(*args(setup, run, "--config.train.steps=100000", "--config.checkpoint.every=0"),
                   log_path=str(setup[0] / "term.log"))
  wait_for(lambda: os.path.exists(os.path.join(run, "metrics.jsonl")) and len(cli.metrics(run)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  log = open(setup[0] / "term.log").read()
  assert "SIGTERM received" in log
  steps = sorted(int(s) for s in os.listdir(os.path.join(run, "checkpoints")) if s.isdigit())
  assert len(steps) == 1 and 3 <= steps[0] < 100000
  assert params_of(run)[0] == steps[0]


def test_empty_step_dir_is_skipped_and_config_change_refused(setup):
  run = str(setup[0] / "empty")
  cli.jaxtune(*args(setup, run, "--config.train.steps=6", "--config.checkpoint.every=3"))
  os.makedirs(os.path.join(run, "checkpoints", "9"))
  p = cli.jaxtune(*args(setup, run, "--config.train.steps=9", "--config.train.seed=1"), check=False)
  assert p.returncode != 0 and "train.seed" in p.stderr, p.stderr
  p = cli.jaxtune(*args(setup, run, "--config.train.steps=9", "--config.checkpoint.every=3"))
  assert os.path.join("checkpoints", "6") in p.stdout, p.stdout
  assert params_of(run)[0] == 9


def test_nan_stops_with_last_good_checkpoint(setup):
  run = str(setup[0] / "nan")
  p = cli.jaxtune(*args(setup, run, "--config.train.steps=20", "--config.checkpoint.every=1",
                        "--config.optim.lr=1e30", "--config.optim.schedule=constant",
                        "--config.optim.warmup_steps=0", "--config.optim.clip_norm=0.0"), check=False)
  assert p.returncode != 0
  assert "loss is nan" in p.stderr or "loss is inf" in p.stderr, p.stderr
  saved = sorted(int(s) for s in os.listdir(os.path.join(run, "checkpoints")) if s.isdigit())
  failed_at = int(p.stderr.split("step ")[-1].split(":")[0])
  assert saved and max(saved) < failed_at
  step, params = params_of(run)
  assert step == max(saved)
  assert all(np.isfinite(x).all() for x in params)


def test_restore_onto_another_mesh(tmp_path):
  assert jax.device_count() >= 8, "tests/conftest.py sets 8 fake CPU devices"
  cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, max_position_embeddings=64)
  tx = optax.adamw(1e-3)

  def sharded_state(mesh, seed):
    with jax.set_mesh(mesh):
      model = build_model(cfg, rngs=nnx.Rngs(seed))
      params = nnx.state(model, nnx.Param)
      nnx.update(model, jax.device_put(params, mesh_lib.state_shardings(params, mesh)))
      return init_state(model, tx)[1]

  m1, m2 = mesh_lib.make_mesh(8, 1, 1), mesh_lib.make_mesh(2, 2, 2)
  saved = sharded_state(m1, seed=0)
  mgr = ckpt_lib.make_manager(str(tmp_path), async_save=False)
  ckpt_lib.save(mgr, saved, None, {"config": {}})
  target = sharded_state(m2, seed=1)
  restored, _ = ckpt_lib.restore(mgr, 0, target, None)
  for a, b, t in zip(jax.tree.leaves(saved.params), jax.tree.leaves(restored.params), jax.tree.leaves(target.params)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == t.sharding
  kernel = restored.params["model"]["layers"][0]["mlp"]["gate_proj"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_skip_nonfinite_keeps_the_last_finite_params(setup):
  run = str(setup[0] / "skip")
  cli.jaxtune(*args(setup, run, "--config.train.steps=6", "--config.checkpoint.every=0",
                    "--config.optim.lr=1e30", "--config.optim.schedule=constant", "--config.optim.warmup_steps=0",
                    "--config.optim.clip_norm=0.0", "--config.train.skip_nonfinite=True"))
  rows = cli.metrics(run)
  assert rows[-1]["step"] == 6 and rows[-1].get("skipped_nonfinite", 0) >= 1
  step, params = params_of(run)
  assert step == 6 and all(np.isfinite(x).all() for x in params)
