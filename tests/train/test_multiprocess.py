"""Two `jax.distributed` processes on 127.0.0.1 train (and sample eval prompts) exactly like one process
with the same devices."""

import json
import os
import subprocess

import numpy as np

from tests.helpers import cli
from tests.helpers.hf_models import make_tiny_chat_model


def env(devices, **extra):
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              **extra)


def run_one_and_two(argv, tmp_path):
  """Runs argv(run_dir) as one process with 8 devices and as two processes with 4 each; returns the two
  run dirs and the two processes' output."""
  one = str(tmp_path / "one")
  p = subprocess.run(argv(one), cwd=cli.ROOT, env=env(8), capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  two = str(tmp_path / "two")
  port = cli.free_port()
  procs = [subprocess.Popen(argv(two), cwd=cli.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                    JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  outs = [pr.communicate(timeout=300)[0] for pr in procs]
  assert [pr.returncode for pr in procs] == [0, 0], "\n".join(outs)
  return one, two, outs


def test_two_processes_equal_one(tmp_path):
  model_dir, tok = make_tiny_chat_model(tmp_path, "llama", template="chatml")
  data = tmp_path / "chat.jsonl"
  data.write_text("\n".join(cli.chat_records(64)) + "\n")
  prompts = tmp_path / "prompts.jsonl"  # sampled at the last step, with the model sharded over both processes
  prompts.write_text("\n".join(json.dumps({"prompt": f"Join {w} and stone.", "reference": f"{w} stone"})
                               for w in ("apple", "river", "cloud")) + "\n")

  def argv(run):
    return cli.cli_cmd("train", f"--config=configs/tiny.py:{model_dir},{data}", f"--config.run.dir={run}",
                       "--config.train.steps=4", "--config.train.batch_size=8", "--config.train.log_every=1",
                       "--config.mesh.data=-1", "--config.checkpoint.every=0",
                       f"--config.eval.prompts={prompts}", "--config.eval.max_new_tokens=5")

  one, two, _ = run_one_and_two(argv, tmp_path)
  a, b = cli.metrics(one), cli.metrics(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]  # process 0 alone writes metrics
  np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in a], [r["grad_norm"] for r in b], rtol=1e-5)
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["4"]
  assert a[-1]["eval_exact_match"] == b[-1]["eval_exact_match"]

  def samples(run):
    with open(os.path.join(run, "samples.jsonl")) as f:
      return [json.loads(line) for line in f]

  assert len(samples(one)) == 3 and samples(one) == samples(two)


def test_two_processes_equal_one_dpo(tmp_path, tiny_dpo):
  """DPO: the reference pass over pairs sharded across both processes (its results gathered on each), then
  the same steps as one process."""

  def argv(run):
    return cli.cli_cmd("train", tiny_dpo.config, f"--config.run.dir={run}", f"--config.data.cache_dir={run}/cache",
                       "--config.train.steps=3", "--config.train.batch_size=8", "--config.train.log_every=1",
                       "--config.mesh.data=-1", "--config.checkpoint.every=0")

  one, two, outs = run_one_and_two(argv, tmp_path)
  assert all(f"{2 * tiny_dpo.pairs} sequences computed" in o for o in outs[:1])
  a, b = cli.metrics(one), cli.metrics(two)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
  for k in ("loss", "grad_norm", "reward_margin", "logps_chosen"):
    np.testing.assert_allclose([r[k] for r in a], [r[k] for r in b], rtol=1e-5, atol=1e-6, err_msg=k)
