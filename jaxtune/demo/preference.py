"""The DPO demo's data: preference pairs over the demo tasks, the correct answer against a plausible wrong one.

A wrong answer is one edit away from the right one, of the kind the tiny model gets wrong: a sum or a
length off by one or ten, two neighbouring characters of a reversed word or sorted digits swapped, one
letter of an upper-cased word left lower case. Held-out pairs use the SFT demo's held-out prompts, so the
held-out exact match measures the same prompts as the SFT demo. Deterministic from the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from jaxtune.demo import tasks

MARKER = "READY.json"


def wrong_answer(prompt: str, answer: str, rng: random.Random) -> str:
  """A plausible wrong answer to a task prompt (never the right one)."""
  kind = tasks.kind_of(prompt)
  if kind in ("add", "length"):
    n = int(answer)
    options = [n + d for d in (1, -1, 10, -10, 2) if n + d >= 0 and n + d != n]
    return str(rng.choice(options))
  if kind == "upper":
    i = rng.randrange(len(answer))
    return answer[:i] + answer[i].lower() + answer[i + 1:]
  # reverse, sort: swap two neighbours that differ (or, if none differ, add a character)
  spots = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
  if not spots:
    return answer + answer[-1]
  i = rng.choice(spots)
  return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2:]


def pair(prompt: str, answer: str, rng: random.Random) -> dict:
  return {"prompt": prompt, "chosen": answer, "rejected": wrong_answer(prompt, answer, rng)}


def make_pairs(n_train: int, heldout_records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
  """(train pairs on fresh prompts, held-out pairs on the held-out prompts)."""
  rng = random.Random(seed)
  held = [tasks.prompt_and_answer(r) for r in heldout_records]
  held_prompts = {msgs[-1]["content"] for msgs, _ in held}
  heldout = [pair(msgs[-1]["content"], a, rng) for msgs, a in held]
  train, seen = [], set()
  for prompt, answer in tasks._stream(seed + 7, tasks.TRAIN_MIX):  # noqa: SLF001 - the tasks' own stream
    if len(train) >= n_train:
      break
    if prompt not in held_prompts and prompt not in seen:
      seen.add(prompt)
      train.append(pair(prompt, answer, rng))
  return train, heldout


def prepare(root: Path, n_train: int, heldout_path: Path, seed: int = 0) -> tuple[Path, Path]:
  """Writes train/held-out pair files under `root` once (reused while the spec matches)."""
  want = {"n_train": n_train, "seed": seed, "heldout": str(heldout_path)}
  train_path, heldout_out = root / "pairs_train.jsonl", root / "pairs_heldout.jsonl"
  try:
    if json.loads((root / MARKER).read_text()) == want:
      return train_path, heldout_out
  except (OSError, ValueError):
    pass
  root.mkdir(parents=True, exist_ok=True)
  train, heldout = make_pairs(n_train, tasks.read_jsonl(str(heldout_path)), seed)
  tasks.write_jsonl(train, str(train_path))
  tasks.write_jsonl(heldout, str(heldout_out))
  (root / MARKER).write_text(json.dumps(want, sort_keys=True))
  return train_path, heldout_out
