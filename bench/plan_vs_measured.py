"""`jaxtune plan` against the measured peak memory of a real train step, on CPU.

A small Llama-shaped model (hidden 384, 4 layers, vocab 8192: ~14M params, float32) is planned with the
compiled path and with the analytic estimate, then one real step runs on the same mesh. On CPU, device memory
is host memory, so "measured" is the process's peak resident memory while the step runs (VmHWM, reset through
/proc/self/clear_refs just before it) minus its resident memory before the train state and batch were
allocated (after compiling), divided by the devices: what the OS saw the step touch, allocator overhead
included. Each setting runs in its own process.

  python bench/plan_vs_measured.py             # every setting
  python bench/plan_vs_measured.py --one NAME  # one, in this process

  RESULT plan_vs_measured setting=... devices=N planned_mb=... estimate_mb=... measured_mb=... ratio=...
(`setting` is printed as its index in SETTINGS; ratio = planned / measured.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPE = dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=2, head_dim=64, tie_word_embeddings=False)
BASE = {"model.dtype": "float32", "model.remat": "none", "data.seq_len": 256, "train.batch_size": 8}
SETTINGS = {  # name -> (devices, config changes)
    "base": (1, {}),
    "remat_full": (1, {"model.remat": "full"}),
    "loss_chunk_64": (1, {"train.loss_chunk": 64}),
    "grad_accum_2": (1, {"train.grad_accum": 2}),
    "fsdp_2": (2, {"mesh.fsdp": 2}),
}


def _rss(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"no {field} in /proc/self/status")


def config(model_dir: str, changes: dict):
  from jaxtune.config import Config
  from jaxtune.plan import with_keys
  from jaxtune.recipes import cpu_recipe
  cfg = Config.from_dict(cpu_recipe())
  return with_keys(cfg, {"model.path": model_dir, **BASE, **changes})


def write_model_dir(d: str) -> str:
  """A config.json of SHAPE (a Llama preset resized): the plan reads nothing else."""
  from jaxtune.models.presets import hf_config
  hf = hf_config("meta-llama/Llama-3.2-1B-Instruct")
  hf.update(SHAPE)
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(hf, f)
  return d


def measure(name: str, model_dir: str) -> dict:
  """{planned, estimate, measured} bytes per device of setting `name` (call in a fresh process)."""
  devices, changes = SETTINGS[name]
  import jax
  jax.config.update("jax_num_cpu_devices", devices)
  import jax.numpy as jnp

  from jaxtune import mesh as mesh_lib
  from jaxtune import plan as plan_lib
  from jaxtune.train import objectives
  from jaxtune.train.step import jit_train_step

  cfg = config(model_dir, changes)
  hw = plan_lib.Hardware(devices, 1e12)
  planned = plan_lib.plan(cfg, hw, compile=True).memory.total
  estimate = plan_lib.plan(cfg, hw, compile=False).memory.total
  # the real step: the same jitted function the run uses, compiled before anything is allocated
  axes = plan_lib.sizes_for(cfg, devices)
  mesh = mesh_lib.make_mesh(**axes, devices=jax.devices()[:devices])
  graphdef, state, tx, schedule = plan_lib.abstract_state(cfg, plan_lib.abstract_model(cfg), mesh)
  objective = objectives.for_config(cfg)
  batch = plan_lib.abstract_batch(cfg, objective, mesh)
  step = jit_train_step(graphdef, tx, schedule, cfg.train.grad_accum, jax.tree.map(lambda x: x.sharding, state),
                        mesh_lib.batch_sharding(mesh), objective=objective)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
  before = _rss("VmRSS")
  real = jax.tree.map(lambda s: jax.device_put(jnp.full(s.shape, 0.01, s.dtype), s.sharding), state)
  real_batch = {k: jax.device_put(jnp.ones(s.shape, s.dtype), s.sharding) for k, s in batch.items()}
  jax.block_until_ready((real, real_batch))
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
  out = compiled(real, real_batch)
  jax.block_until_ready(out)
  measured = (_rss("VmHWM") - before) / devices
  return {"planned": planned, "estimate": estimate, "measured": measured}


def main() -> int:
  if "--one" in sys.argv:
    name = sys.argv[sys.argv.index("--one") + 1]
    with tempfile.TemporaryDirectory() as d:
      r = measure(name, write_model_dir(d))
    mb = lambda x: f"{x / 2**20:.1f}"  # noqa: E731
    print(f"RESULT plan_vs_measured setting={list(SETTINGS).index(name)} devices={SETTINGS[name][0]} "
          f"planned_mb={mb(r['planned'])} estimate_mb={mb(r['estimate'])} measured_mb={mb(r['measured'])} "
          f"ratio={r['planned'] / r['measured']:.3f}  # {name}", flush=True)
    return 0
  for name in SETTINGS:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name], env=env, capture_output=True,
                       text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT")]
    if p.returncode or not lines:
      print(p.stderr[-2000:], file=sys.stderr)
      return 1
    print(lines[0], flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
