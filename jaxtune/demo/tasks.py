"""Synthetic instruction tasks with exactly checkable answers.

Every record is a two-turn conversation in the OpenAI `messages` format. The
operands are drawn from a seeded generator, so the same seed always gives the
same files; the held-out prompts never occur in the train split.
"""

from __future__ import annotations

import json
import random
import string
from typing import Callable, Iterable, Iterator

Record = dict  # {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}

# Substrings the demo tokenizer keeps as single tokens; words avoid them so
# every task word is spelled one character per token.
_RESERVED = ("user", "assistant", "system")


def _word(rng: random.Random) -> str:
  while True:
    w = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 7)))
    if not any(r in w for r in _RESERVED):
      return w


def _digits(rng: random.Random) -> str:
  return "".join(rng.choices(string.digits, k=rng.randint(3, 7)))


def reverse(rng: random.Random) -> tuple[str, str]:
  w = _word(rng)
  return f"Reverse: {w}", w[::-1]


def sort_digits(rng: random.Random) -> tuple[str, str]:
  d = _digits(rng)
  return f"Sort: {d}", "".join(sorted(d))


def add(rng: random.Random) -> tuple[str, str]:
  a, b = rng.randint(0, 99), rng.randint(0, 9)
  return f"Add: {a}+{b}", str(a + b)


def upper(rng: random.Random) -> tuple[str, str]:
  w = _word(rng)
  return f"Upper: {w}", w.upper()


def length(rng: random.Random) -> tuple[str, str]:
  w = _word(rng)
  return f"Length: {w}", str(len(w))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": reverse,
    "sort": sort_digits,
    "add": add,
    "upper": upper,
    "length": length,
}

# Share of each kind in the train split: the slower-learnt kinds get more.
TRAIN_MIX = {"reverse": 1.5, "sort": 1.0, "add": 2.0, "upper": 1.0, "length": 0.5}

# Every character a task prompt or answer can contain.
CHARSET = "".join(sorted(set(
    string.ascii_letters + string.digits + " :+")))


def record(prompt: str, answer: str) -> Record:
  return {"messages": [{"role": "user", "content": prompt},
                       {"role": "assistant", "content": answer}]}


def _stream(seed: int, mix: dict[str, float] | None = None) -> Iterator[tuple[str, str]]:
  """Task examples forever from one seeded generator: round-robin over the
  kinds, or kinds drawn with the weights of `mix`."""
  rng = random.Random(seed)
  names = list(TASKS)
  while True:
    if mix is None:
      for name in names:
        yield TASKS[name](rng)
    else:
      name = rng.choices(names, weights=[mix[n] for n in names])[0]
      yield TASKS[name](rng)


def make_splits(n_train: int, n_heldout: int, seed: int = 0,
                mix: dict[str, float] | None = None) -> tuple[list[Record], list[Record]]:
  """(train, heldout): held-out prompts are unique, balanced over the kinds and
  absent from train; train kinds follow `mix` (default TRAIN_MIX)."""
  stream = _stream(seed)
  heldout: dict[str, str] = {}
  while len(heldout) < n_heldout:
    prompt, answer = next(stream)
    heldout.setdefault(prompt, answer)
  train: list[Record] = []
  for prompt, answer in _stream(seed + 1, TRAIN_MIX if mix is None else mix):
    if len(train) >= n_train:
      break
    if prompt not in heldout:
      train.append(record(prompt, answer))
  return train, [record(p, a) for p, a in heldout.items()]


def prompt_and_answer(rec: Record) -> tuple[list[dict], str]:
  """The conversation up to the last assistant turn, and that turn's text."""
  msgs = rec["messages"]
  return msgs[:-1], msgs[-1]["content"]


def write_jsonl(records: Iterable[Record], path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str) -> list[Record]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def kind_of(prompt: str) -> str:
  """The task kind a prompt belongs to (for per-kind accuracy)."""
  head = prompt.split(":", 1)[0].lower()
  return {"reverse": "reverse", "sort": "sort", "add": "add", "upper": "upper",
          "length": "length"}.get(head, "other")

