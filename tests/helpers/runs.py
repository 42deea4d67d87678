"""One tiny trained run shared by every test that needs a run dir (CLI, export, generate, bad input).

Trained once per test session through the real command line: a tiny Llama with a locally trained
tokenizer, 48 chat records plus two malformed lines, 6 steps with checkpoints and eval loss at steps 3 and 6,
a relative run dir (as users type it). Tests read it; a test that would change it works on `copy()`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from tests.helpers.cli import ROOT, chat_records, jaxtune
from tests.helpers.hf_models import make_tiny_chat_model


@dataclasses.dataclass(frozen=True)
class TinyRun:
  root: Path  # a temp dir holding everything
  model_dir: Path  # the base model (HF dir, tokenizer beside it)
  data: str  # chat.jsonl: 48 records, line 6 not JSON, line 10 without a reply
  run: str  # the run dir, relative to ROOT (where the CLI runs)
  stdout: str  # what `jaxtune train` printed
  stderr: str = ""  # its warnings

  @property
  def run_abs(self) -> str:
    return os.path.join(ROOT, self.run)

  @property
  def config(self) -> str:
    return f"--config={ROOT}/configs/tiny.py:{self.model_dir},{self.data}"

  def copy(self, name: str) -> str:
    """A copy of the run dir next to it (relative to ROOT), to resume or damage without touching the original."""
    dest = os.path.join(os.path.dirname(self.run), name)
    shutil.copytree(self.run_abs, os.path.join(ROOT, dest))
    return dest


def train_args(data) -> tuple[str, ...]:
  """The shared run's overrides beyond its config and run dir."""
  return ("--config.train.steps=6", "--config.checkpoint.every=3", "--config.train.eval_every=3",
          f"--config.data.eval=('{data}',)")


def train_tiny_run(tmp: Path) -> TinyRun:
  model_dir, _ = make_tiny_chat_model(tmp, "llama")
  lines = chat_records()
  lines.insert(5, "{not json")
  lines.insert(9, json.dumps({"messages": [{"role": "user", "content": "no reply"}]}))
  data = tmp / "chat.jsonl"
  data.write_text("\n".join(lines) + "\n")
  run = os.path.relpath(str(tmp / "run"), ROOT)
  p = jaxtune("train", f"--config=configs/tiny.py:{model_dir},{data}", f"--config.run.dir={run}", *train_args(data))
  return TinyRun(root=tmp, model_dir=model_dir, data=str(data), run=run, stdout=p.stdout, stderr=p.stderr)


def preference_records(n: int = 40) -> list[dict]:
  """n preference pairs in every record form, the chosen reply the right join of two words, plus one pair
  whose sides are equal (dropped)."""
  words = ["apple", "river", "stone", "cloud", "green", "light", "music", "table"]
  rows = []
  for i in range(n):
    a, b = words[i % 8], words[(i * 3 + 1) % 8]
    q = f"Join {a} and {b}."
    if i % 3 == 0:
      rows.append({"prompt": q, "chosen": f"{a} {b}", "rejected": f"{b} {a}"})
    elif i % 3 == 1:
      rows.append({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
                   "chosen": [{"role": "assistant", "content": f"{a} {b}"}],
                   "rejected": [{"role": "assistant", "content": a}]})
    else:
      conv = [{"role": "user", "content": q}]
      rows.append({"chosen": conv + [{"role": "assistant", "content": f"{a} {b}"}],
                   "rejected": conv + [{"role": "assistant", "content": f"{a}-{b}!"}]})
  rows.insert(3, {"prompt": "x", "chosen": "same", "rejected": "same"})
  return rows


@dataclasses.dataclass(frozen=True)
class TinyDpo:
  root: Path
  model_dir: Path
  data: str  # pairs.jsonl: `pairs` usable pairs and one with equal sides
  pairs: int

  @property
  def config(self) -> str:
    return f"--config=configs/dpo_tiny.py:{self.model_dir},{self.data}"


def make_tiny_dpo(tmp: Path, n: int = 40) -> TinyDpo:
  model_dir, _ = make_tiny_chat_model(tmp, "llama")
  data = tmp / "pairs.jsonl"
  data.write_text("\n".join(json.dumps(r) for r in preference_records(n)) + "\n")
  return TinyDpo(root=tmp, model_dir=model_dir, data=str(data), pairs=n)
