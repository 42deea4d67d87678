"""Synthetic demo tasks: deterministic, correct answers, held-out disjoint from train."""

import random

from jaxtune.demo import tasks


def test_same_seed_same_splits():
  a = tasks.make_splits(300, 40, seed=3)
  b = tasks.make_splits(300, 40, seed=3)
  c = tasks.make_splits(300, 40, seed=4)
  assert a == b
  assert a != c


def test_answers_are_correct():
  train, heldout = tasks.make_splits(500, 100)
  for rec in train + heldout:
    msgs = rec["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    head, arg = msgs[0]["content"].split(": ", 1)
    answer = msgs[1]["content"]
    if head == "Reverse":
      assert answer == arg[::-1]
    elif head == "Sort":
      assert answer == "".join(sorted(arg)) and arg.isdigit()
    elif head == "Add":
      x, y = arg.split("+")
      assert int(answer) == int(x) + int(y)
    elif head == "Upper":
      assert answer == arg.upper() and arg.islower()
    elif head == "Length":
      assert int(answer) == len(arg)
    else:
      raise AssertionError(f"unknown task {head!r}")


def test_every_kind_and_heldout_disjoint():
  train, heldout = tasks.make_splits(2000, 200)
  prompts = lambda recs: [r["messages"][0]["content"] for r in recs]
  assert len(train) == 2000 and len(heldout) == 200
  assert len(set(prompts(heldout))) == 200
  assert not set(prompts(heldout)) & set(prompts(train))
  kinds = {tasks.kind_of(p) for p in prompts(heldout)}
  assert kinds == set(tasks.TASKS)


def test_charset_covers_tasks():
  rng = random.Random(0)
  for fn in tasks.TASKS.values():
    for _ in range(200):
      prompt, answer = fn(rng)
      assert set(prompt + answer) <= set(tasks.CHARSET)
      assert not any(w in prompt for w in tasks._RESERVED)


def test_jsonl_round_trip(tmp_path):
  train, _ = tasks.make_splits(20, 5)
  path = str(tmp_path / "t.jsonl")
  tasks.write_jsonl(train, path)
  assert tasks.read_jsonl(path) == train


def test_train_mix_and_balanced_heldout():
  from collections import Counter
  train, heldout = tasks.make_splits(5000, 100)
  got = Counter(tasks.kind_of(r["messages"][0]["content"]) for r in train)
  total = sum(tasks.TRAIN_MIX.values())
  for kind, w in tasks.TRAIN_MIX.items():
    assert abs(got[kind] / 5000 - w / total) < 0.03, (kind, got)
  assert set(Counter(tasks.kind_of(r["messages"][0]["content"]) for r in heldout).values()) == {20}
