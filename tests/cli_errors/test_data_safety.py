"""Issue 18, class 1: no input destroys data, and a damaged run still resumes.

Each case runs the real command line (in this process through `jaxtune.cli.main` unless a second process is
the point) and checks the exit status, the one `error:` line naming the thing, no traceback, and that
nothing was deleted or overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from jaxtune.train.lock import RunLock
from tests.helpers import cli
from tests.helpers.cli import ROOT, assert_error, assert_ok, run_main, tree_digest


def copy_run(tiny_run, name: str) -> str:
  return os.path.join(ROOT, tiny_run.copy(name))


# -- export ------------------------------------------------------------------------------------------------

def _export_cases(tiny_run, tmp):
  """name -> (--out, extra args, what the error names); `tmp` holds the directories the cases need."""
  model, run = str(tiny_run.model_dir), tiny_run.run_abs
  stale = tmp / "stale"  # an old PEFT adapter: replacing it needs --overwrite
  stale.mkdir()
  (stale / "adapter_config.json").write_text("{}")
  notes = tmp / "notes"  # not a model export: never replaced
  notes.mkdir()
  (notes / "notes.txt").write_text("mine")
  (tmp / "a_file").write_text("x")
  return {
      "the base model": (model, ["--overwrite"], "model.path"),
      "inside the base model": (os.path.join(model, "merged"), [], "model.path"),
      "the run dir": (run, ["--overwrite"], "the run dir"),
      "inside the run dir": (os.path.join(run, "hf"), [], "the run dir"),
      "a dir holding the run dir": (os.path.dirname(run), ["--overwrite"], "the run dir"),
      "a non-empty dir": (str(stale), [], "--overwrite"),
      "a non-model dir with --overwrite": (str(notes), ["--overwrite"], "not a model export"),
      "a file": (str(tmp / "a_file"), ["--overwrite"], "not a directory"),
      "the current dir": (".", ["--overwrite"], "current directory"),
      "a gs:// path": ("gs://bucket/out", [], "local directory"),
  }


def test_export_refuses_destinations_that_would_destroy_data(tiny_run, tmp_path, monkeypatch):
  cases = _export_cases(tiny_run, tmp_path)
  monkeypatch.chdir(tmp_path)  # "the current dir" case: a scratch dir, never the checkout
  watched = [str(tiny_run.model_dir), tiny_run.run_abs, str(tmp_path)]
  before = {p: tree_digest(p) for p in watched}
  for name, (out, extra, names) in cases.items():
    r = run_main("export", "--run", tiny_run.run_abs, "--out", out, *extra)
    assert_error(r, names)
    assert {p: tree_digest(p) for p in watched} == before, f"{name}: files changed"


def test_export_overwrite_replaces_whole_and_a_failed_export_changes_nothing(tiny_run, tmp_path, monkeypatch):
  out = tmp_path / "hf"
  out.mkdir()
  (out / "config.json").write_text("{}")
  (out / "adapter_config.json").write_text("{}")  # stale: loaders would misread the new export beside it
  assert_ok(run_main("export", "--run", tiny_run.run_abs, "--out", str(out), "--overwrite"))
  assert "adapter_config.json" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
  assert sorted(os.listdir(tmp_path)) == ["hf"]  # no temp sibling left
  good = tree_digest(str(out))

  # A write that fails half-way (a full disk) leaves the previous export as it was.
  from jaxtune.weights import hf_export

  def full(*args, **kw):
    raise OSError(28, "No space left on device", "model.safetensors")

  monkeypatch.setattr(hf_export, "write_safetensors", full)
  r = run_main("export", "--run", tiny_run.run_abs, "--out", str(out), "--overwrite")
  assert_error(r, "No space left on device")
  assert tree_digest(str(out)) == good and sorted(os.listdir(tmp_path)) == ["hf"]


# -- the run-dir lock ----------------------------------------------------------------------------------------

def test_second_train_on_a_locked_run_dir_stops_at_once(tiny_run, tmp_path):
  run = str(tmp_path / "run")
  with RunLock(run):  # a live holder: this process
    t0 = time.perf_counter()
    r = run_main("train", tiny_run.config, f"--config.run.dir={run}")
    elapsed = time.perf_counter() - t0
  assert_error(r, f"pid {os.getpid()}", "in use")
  assert "data:" not in r.out and sorted(os.listdir(run)) == ["lock.json"], (r.out, os.listdir(run))
  assert elapsed < 10, elapsed  # before any data or weights are read


def test_two_trains_on_one_run_dir(tiny_run):
  """A real second process: it stops with the holder's pid while the first trains on (until SIGTERM); the
  first's metrics hold every step once."""
  run = copy_run(tiny_run, "locked")
  log = os.path.join(os.path.dirname(run), "first.log")
  first = cli.start("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.steps=100000",
                    "--config.checkpoint.every=0", "--config.train.log_every=1", log_path=log)
  try:
    t0 = time.time()
    while not os.path.exists(os.path.join(run, "metrics.jsonl")) or len(cli.metrics(run)) <= 6:
      assert first.poll() is None, open(log).read()
      assert time.time() - t0 < 300
      time.sleep(0.2)
    # (a second run that got in would resume from the first's checkpoint and end at once: no long wait)
    second = cli.run_sub("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.steps=8")
    assert first.poll() is None, open(log).read()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=300) == 0, open(log).read()
  finally:
    if first.poll() is None:
      first.send_signal(signal.SIGKILL)
  assert_error(second, f"pid {first.pid}", "in use")
  steps = [row["step"] for row in cli.metrics(run)]
  assert steps == sorted(set(steps)) and steps[-1] > 6, steps


def test_remote_lock_heartbeat(gcs, monkeypatch):
  """gs:// run dirs (no flock): a fresh record refuses a second holder, a stale one is taken over."""
  from jaxtune import io
  from jaxtune.errors import TrainingError
  from jaxtune.train import lock
  monkeypatch.setattr(lock, "SETTLE_S", 0.0)
  run = "gs://bucket/runs/a"
  first = RunLock(run).acquire()
  with pytest.raises(TrainingError, match=f"pid {os.getpid()}"):
    RunLock(run).acquire()
  first.release()
  assert io.read_bytes(f"{run}/lock.json") == b""
  rec = {"host": "other-host", "pid": 12345, "started": "then", "token": "x", "heartbeat": time.time() - 10}
  io.write_bytes(f"{run}/lock.json", json.dumps(rec).encode())
  with pytest.raises(TrainingError, match="pid 12345 on host other-host"):
    RunLock(run).acquire()
  rec["heartbeat"] = time.time() - lock.STALE_S - 1  # the holder stopped beating: taken over
  io.write_bytes(f"{run}/lock.json", json.dumps(rec).encode())
  taken = RunLock(run).acquire()
  assert json.loads(io.read_bytes(f"{run}/lock.json"))["token"] == taken.token
  taken.release()


# -- damaged checkpoints -------------------------------------------------------------------------------------

def _files(d: str):
  for root, _, files in os.walk(d):
    for f in files:
      yield os.path.join(root, f)


def _truncate_data(step_dir: str, item: str) -> None:
  for p in _files(os.path.join(step_dir, item)):
    if os.path.getsize(p) > 10_000:
      os.truncate(p, os.path.getsize(p) // 2)


def _zero_data(step_dir: str, item: str) -> None:
  """Zeroes the array bytes (ocdbt data files), keeping sizes: Orbax restores zeros without a word."""
  for p in _files(os.path.join(step_dir, item, "ocdbt.process_0", "d")):
    with open(p, "r+b") as f:
      f.write(b"\0" * os.path.getsize(p))


DAMAGE = {  # what a crash, a full disk or a bad copy leaves in the newest checkpoint (step 6)
    "meta not JSON": lambda d: open(os.path.join(d, "meta", "metadata"), "w").write("{bad"),
    "params truncated": lambda d: _truncate_data(d, "params"),
    "params zeroed": lambda d: _zero_data(d, "params"),
    "params manifest gone": lambda d: os.remove(os.path.join(d, "params", "manifest.ocdbt")),
    "opt_state zeroed": lambda d: _zero_data(d, "opt_state"),
    "opt_state missing": lambda d: shutil.rmtree(os.path.join(d, "opt_state")),
    "data_iter garbage": lambda d: open(os.path.join(d, "data_iter", "process_0-of-1.json"), "w").write("zz"),
}
EXPORT_SEES = ("meta not JSON", "params truncated", "params zeroed", "params manifest gone")  # export reads params


@pytest.fixture(scope="module")
def damaged(tiny_run):
  """{damage: a copy of the tiny run whose checkpoint 6 has it}."""
  out = {}
  for i, (name, damage) in enumerate(DAMAGE.items()):
    run = copy_run(tiny_run, f"damaged{i}")
    damage(os.path.join(run, "checkpoints", "6"))
    out[name] = run
  return out


@pytest.mark.parametrize("name", EXPORT_SEES)
def test_export_names_the_damaged_checkpoint(damaged, name, tmp_path):
  run = damaged[name]
  before = tree_digest(run)
  r = run_main("export", "--run", run, "--out", str(tmp_path / "hf"))
  assert_error(r, "checkpoint 6", "damaged", "these restore: 3", "--step")
  assert tree_digest(run) == before and not os.path.exists(tmp_path / "hf")  # export renames nothing


@pytest.mark.parametrize("name", ["params zeroed", "opt_state missing", "data_iter garbage"])
def test_damaged_newest_checkpoint_resumes_from_the_previous(damaged, tiny_run, name):
  run = damaged[name]
  if name == "params zeroed":  # and a lock left by a process that died (kill -9): taken over
    dead = subprocess.Popen(["true"])
    dead.wait()
    open(os.path.join(run, "lock.json"), "w").write(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
  r = run_main("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.steps=4",
               "--config.checkpoint.every=3", "--config.train.eval_every=0")
  assert_ok(r)
  assert "resumed from" in r.out and r.out.split("resumed from")[1].split()[0].endswith("/3"), r.out
  assert "checkpoint 6 is damaged" in r.err, r.err
  names = os.listdir(os.path.join(run, "checkpoints"))
  assert "6" not in names and any(n.startswith("6.bad-") for n in names) and "4" in names, names
  assert [row["step"] for row in cli.metrics(run)][-2:] == [3, 4]  # rows of the lost steps 4-6 were dropped
  if name == "params zeroed":
    assert f"pid {dead.pid}" in r.err and "taking over" in r.err, r.err


def test_no_restorable_checkpoint_stops_and_renames_nothing(tiny_run):
  run = copy_run(tiny_run, "all_damaged")
  for step in ("3", "6"):
    _zero_data(os.path.join(run, "checkpoints", step), "params")
  before = sorted(os.listdir(os.path.join(run, "checkpoints")))
  r = run_main("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.steps=8")
  assert_error(r, "no checkpoint", "step 6", "step 3", "fingerprint")
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == before
