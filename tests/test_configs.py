"""Every file in configs/ loads the way `jaxtune train` loads it, and the launch scripts are sound.

Configs: ml-collections `DEFINE_config_file(..., lock_config=True)`, then
`Config.from_dict`; a typo'd override, or a key a config file invents, is an
error that names the key. Launch scripts: `bash -n`, `set -euo pipefail`, and a
run with stand-ins for gcloud / xpk / srun / jaxtune that checks the command
every worker runs, arguments with spaces and quotes included.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from jaxtune.config import Config, ConfigError, default_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))
LAUNCH = sorted(p for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))
ids = lambda p: p.name
# ml-collections loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def parse(path: Path | str, *overrides: str):
  """The locked ConfigDict `jaxtune train --config PATH OVERRIDES...` starts from."""
  argv = ["jaxtune", f"--config={path}", *overrides]
  fv = flags.FlagValues()
  # sys_argv: ml-collections finds the --config.* overrides there (the process's sys.argv by default).
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


def keys(d, prefix=""):
  out = set()
  for k, v in d.items():
    out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
  return out


def test_there_are_configs_and_launch_scripts():
  names = {p.name for p in CONFIGS}
  assert {"tiny.py", "demo.py"} <= names and len(names) >= 8, names
  assert {p.name for p in LAUNCH} >= {"tpu_vm.sh", "xpk.sh", "slurm_gpu.sbatch"}


@pytest.mark.parametrize("path", CONFIGS, ids=ids)
def test_config_parses_locked_and_converts(path):
  cd = parse(path)
  assert cd.is_locked
  assert keys(cd.to_dict()) == keys(default_config().to_dict()), "a config file may only set declared keys"
  assert Config.from_dict(cd).run.dir


@pytest.mark.parametrize("path", CONFIGS, ids=ids)
def test_overrides_apply(path):
  cd = parse(path, "--config.train.steps=7", "--config.optim.lr=0.5",
             "--config.data.train=({'path': 'my data.jsonl', 'format': 'messages', 'weight': 2.0},)")
  cfg = Config.from_dict(cd)
  assert (cfg.train.steps, cfg.optim.lr) == (7, 0.5)
  assert cfg.data.train[0].path == "my data.jsonl" and cfg.data.train[0].weight == 2.0


@pytest.mark.parametrize("path", CONFIGS, ids=ids)
def test_typo_override_names_the_key(path):
  with pytest.raises(AttributeError) as e:  # what `jaxtune train` reports, with the whole --config.* argument
    parse(path, "--config.optim.lrr=1e-4")
  assert "lrr" in str(e.value) and 'Did you mean "lr"' in str(e.value)
  with pytest.raises(flags.Error, match=r"config\.train\.batch_size"):
    parse(path, "--config.train.batch_size=many")


def test_cli_typo_is_an_error_naming_the_key(monkeypatch, capsys):
  from jaxtune import cli
  argv = ["train", f"--config={ROOT / 'configs' / 'qwen3_8b_v6e16.py'}", "--config.train.stepz=3"]
  monkeypatch.setattr(sys, "argv", ["jaxtune", *argv])
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert "stepz" in str(e.value) and "steps" in str(e.value)


def test_key_invented_by_a_config_file_is_named(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from jaxtune.config import default_config\n\n\ndef get_config():\n"
                 "  c = default_config()\n  c.optim.learning_rate = 1e-4\n  return c\n")
  with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
    Config.from_dict(parse(bad))


# -- launch scripts ---------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCH, ids=ids)
def test_launch_script_is_valid_bash(path):
  subprocess.run(["bash", "-n", str(path)], check=True)
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
  assert os.access(path, os.X_OK), f"{path} is not executable"


def test_launch_library_is_valid_bash():
  """launch/common.bash is sourced by the scripts, not run."""
  subprocess.run(["bash", "-n", str(ROOT / "launch" / "common.bash")], check=True)


TRICKY = ["--config.train.steps=5", "--config.data.train=({'path': 'my data.jsonl', 'format': 'messages'},)",
          '--config.run.dir=/runs/a "b" $HOME']


def _fake_jaxtune(tmp_path: Path) -> Path:
  """A `jaxtune` that prints its arguments and JAX_* variables, one per line."""
  bin_dir = tmp_path / "venv" / "bin"
  bin_dir.mkdir(parents=True)
  fake = bin_dir / "jaxtune"
  fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do echo "arg:$a"; done\n'
                  'echo "env:${JAX_COORDINATOR_ADDRESS:-}|${JAX_NUM_PROCESSES:-}|${JAX_PROCESS_ID:-}'
                  '|${CUDA_VISIBLE_DEVICES:-}|${HF_TOKEN:-}"\n')
  fake.chmod(0o755)
  return fake


def _args(out: str) -> list[str]:
  return [line[4:] for line in out.splitlines() if line.startswith("arg:")]


def test_tpu_vm_runs_the_same_command_on_every_worker(tmp_path):
  fake = _fake_jaxtune(tmp_path)
  env = dict(os.environ, DRY_RUN="1", TPU_NAME="my-tpu", ZONE="us-east5-a", ACCELERATOR="v5p-32",
             HF_TOKEN="secret", REMOTE_DIR=shlex.quote(str(ROOT)), REMOTE_VENV=shlex.quote(str(fake.parent.parent)),
             NUM_WORKERS="1", COORDINATOR_IP="10.0.0.2")
  p = subprocess.run([str(ROOT / "launch/tpu_vm.sh"), "--create", "configs/llama3_1_8b_v5p32.py", *TRICKY],
                     env=env, capture_output=True, text=True, check=True)
  lines = p.stdout.splitlines()
  assert any("queued-resources create my-tpu" in l and "--accelerator-type=v5p-32" in l
             and "--runtime-version=v2-alpha-tpuv5" in l for l in lines)
  assert sum("--worker=all" in l for l in lines) == 3  # scp, install, train
  assert "secret" not in p.stdout
  remote = next(l for l in lines if l.startswith("remote: "))[len("remote: "):]
  ran = subprocess.run(["bash", "-c", remote], env=dict(os.environ, HOME=str(tmp_path)), capture_output=True,
                       text=True, check=True)
  assert _args(ran.stdout) == ["train", "--config", "configs/llama3_1_8b_v5p32.py", *TRICKY]

  env.update(NUM_WORKERS="4")
  p = subprocess.run([str(ROOT / "launch/tpu_vm.sh"), "--no-install", "configs/llama3_1_8b_v5p32.py"],
                     env=env, capture_output=True, text=True, check=True)
  remote = next(l for l in p.stdout.splitlines() if l.startswith("remote: "))
  assert "JAX_COORDINATOR_ADDRESS=10.0.0.2:8476 JAX_NUM_PROCESSES=4" in remote and "agent-worker-number" in remote
  assert "scp" not in p.stdout


def test_tpu_vm_refuses_a_config_outside_the_checkout(tmp_path):
  outside = tmp_path / "mine.py"
  outside.write_text("")
  env = dict(os.environ, DRY_RUN="1", TPU_NAME="t", ZONE="z")
  p = subprocess.run([str(ROOT / "launch/tpu_vm.sh"), str(outside)], env=env, capture_output=True, text=True)
  assert p.returncode != 0 and "outside" in p.stderr


def test_xpk_workload_command(tmp_path):
  env = dict(os.environ, DRY_RUN="1", CLUSTER="c1", TPU_TYPE="v6e-16", HF_TOKEN="secret", PROJECT="p1")
  p = subprocess.run([str(ROOT / "launch/xpk.sh"), "configs/qwen3_8b_v6e16.py", *TRICKY], env=env,
                     capture_output=True, text=True, check=True)
  xpk_line = next(l for l in p.stdout.splitlines() if l.startswith("+ xpk "))
  argv = shlex.split(xpk_line[2:])
  assert argv[:3] == ["xpk", "workload", "create"]
  for want in ("--cluster=c1", "--tpu-type=v6e-16", "--num-slices=1", f"--script-dir={ROOT}", "--project=p1"):
    assert want in argv, (want, argv)
  workload = next(a for a in argv if a.startswith("--workload="))[len("--workload="):]
  assert workload.startswith("jt-qwen3-8b-v6e16-") and len(workload) <= 40
  command = next(a for a in argv if a.startswith("--command="))[len("--command="):]
  assert "secret" not in command
  fake = _fake_jaxtune(tmp_path)
  ran = subprocess.run(["bash", "-c", command.replace("pip install", "true")],
                       env=dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}"), capture_output=True,
                       text=True, check=True)
  assert _args(ran.stdout) == ["train", "--config", "configs/qwen3_8b_v6e16.py", *TRICKY]


@pytest.mark.parametrize("tasks_per_node", [1, 8])
def test_slurm_sets_jax_env_per_task(tmp_path, tasks_per_node):
  fake = _fake_jaxtune(tmp_path)
  bin_dir = fake.parent
  (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'gpu-node-3\\ngpu-node-4\\n'\n")
  # srun: drop its options, then run the task once per SLURM_PROCID.
  (bin_dir / "srun").write_text(
      '#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
      'for ((i = 0; i < SLURM_NTASKS; i++)); do\n'
      '  SLURM_PROCID=$i SLURM_LOCALID=$((i % TPN)) "$@" || exit 1\ndone\n')
  for f in ("scontrol", "srun"):
    (bin_dir / f).chmod(0o755)
  ntasks = 2 * tasks_per_node
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="777",
             SLURM_JOB_NODELIST="gpu-node-[3-4]", SLURM_NTASKS=str(ntasks), SLURM_JOB_NUM_NODES="2", SLURM_NTASKS_PER_NODE=f"{tasks_per_node}(x2)",
             SLURM_SUBMIT_DIR=str(ROOT), TPN=str(tasks_per_node), JAXTUNE=str(fake))
  env.pop("CUDA_VISIBLE_DEVICES", None)
  p = subprocess.run(["bash", str(ROOT / "launch/slurm_gpu.sbatch"), "configs/llama3_1_8b_h100x8.py", *TRICKY],
                     env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
  envs = [l[4:].split("|") for l in p.stdout.splitlines() if l.startswith("env:")]
  assert [e[:3] for e in envs] == [["gpu-node-3:12777", str(ntasks), str(i)] for i in range(ntasks)]
  assert [e[3] for e in envs] == ([str(i % tasks_per_node) for i in range(ntasks)] if tasks_per_node > 1
                                  else [""] * ntasks)
  assert _args(p.stdout) == ["train", "--config", "configs/llama3_1_8b_h100x8.py", *TRICKY] * ntasks


def test_auto_compute_dtype():
  import jax
  import jax.numpy as jnp

  from jaxtune.config import default_config
  from jaxtune.config import compute_dtype
  assert default_config().model.dtype == "auto"
  assert jax.default_backend() == "cpu" and compute_dtype("auto") == jnp.float32  # bfloat16 on GPU/TPU
  assert compute_dtype("bfloat16") == jnp.bfloat16


# -- one declaration per key -------------------------------------------------


def test_every_key_is_declared_once_with_help():
  from jaxtune.config import SECTIONS, declarations
  names = [k for k, *_ in declarations()]
  assert len(set(names)) == len(names) > 60
  assert all(text.strip() for _, _, text, _ in declarations())
  assert keys(default_config().to_dict()) == set(names)
  for name, sec in SECTIONS.items():  # the dataclass defaults are the ConfigDict's defaults
    assert getattr(default_config(), name).to_dict() == Config().to_dict()[name], name


def test_train_help_lists_every_key_with_default(capsys):
  from jaxtune import cli
  from jaxtune.config import declarations
  assert cli.main(["train", "--help"]) == 0
  out = capsys.readouterr().out
  for k, default, text, _ in declarations():
    assert f"  {k} = " in out and text in out, k
  assert '  optim.lr = 1e-05' in out and "  train.objective = \"sft\"  [sft | dpo | distill]" in out


def test_readme_holds_the_key_table():
  from jaxtune.config import markdown_table
  assert markdown_table() in (ROOT / "README.md").read_text(), \
      "README.md's key table is out of date: paste jaxtune.config.markdown_table() into it"


def test_config_command_prints_the_resolved_config(capsys):
  import json

  from jaxtune import cli
  assert cli.main(["config", f"--config={ROOT / 'configs' / 'tiny.py'}", "--config.train.steps=7",
                   "--config.data.train=('a.jsonl',)"]) == 0
  d = json.loads(capsys.readouterr().out)
  assert d["train"]["steps"] == 7 and d["data"]["train"] == [
      {"path": "a.jsonl", "format": "auto", "weight": 1.0, "split": "", "subset": ""}]
  assert Config.from_dict(d) == Config.from_dict(parse(ROOT / "configs" / "tiny.py", "--config.train.steps=7",
                                                       "--config.data.train=('a.jsonl',)"))


@pytest.mark.parametrize("key, value, match", [
    ("optim.warmup_steps", -1, r"'optim.warmup_steps': must be >= 0"),
    ("optim.clip_norm", -1.0, r"'optim.clip_norm': must be >= 0"),
    ("checkpoint.every", -3, r"'checkpoint.every': must be >= 0"),
    ("lora.rank", -8, r"'lora.rank': must be >= 0"),
    ("run.dir", "", r"'run.dir': must name a directory"),
    ("train.objective", "ppo", r"'train.objective': 'ppo' is not one of"),
    ("lora.targets", ("q", "qq"), r"'lora.targets'.*unknown: \['qq'\]"),
    ("train.steps", "ten", r"'train.steps': must be an integer"),
    ("dpo.label_smoothing", 0.7, r"'dpo.label_smoothing': must be <= 0.5"),
])
def test_bad_values_name_the_key_and_range(key, value, match):
  sec, name = key.split(".")
  d = Config().to_dict()
  d[sec][name] = value
  with pytest.raises(ConfigError, match=match):
    Config.from_dict(d)


def test_unknown_key_suggests_the_nearest():
  d = Config().to_dict()
  d["optim"]["warmup_step"] = 1
  with pytest.raises(ConfigError, match=r"'optim.warmup_step': unknown key; did you mean 'warmup_steps'"):
    Config.from_dict(d)
  with pytest.raises(ConfigError, match=r"did you mean 'optim'"):
    Config.from_dict({"optm": {}})


def test_config_file_errors_name_the_file(tmp_path):
  from jaxtune.cli import load_config
  cases = {
      "missing.py": None,
      "syntax.py": "def get_config(:\n  pass\n",
      "raises.py": "def get_config():\n  raise RuntimeError('boom')\n",
      "noget.py": "x = 1\n",
      "typed.py": "from jaxtune.config import default_config\n\ndef get_config():\n  c = default_config()\n"
                  "  c.train.steps = 'ten'\n  return c\n",
  }
  want = {"missing.py": "does not exist", "syntax.py": "syntax.py:1: syntax error", "raises.py": "raises.py:2:",
          "noget.py": "has no get_config()", "typed.py": "typed.py:5:"}
  for name, text in cases.items():
    if text is not None:
      (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=want[name]):
      load_config([f"--config={tmp_path / name}"])
