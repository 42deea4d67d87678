"""Held-out exact-match accuracy of the demo, printed before and after tuning."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from typing import Sequence

from jaxtune.demo import tasks
from jaxtune.demo.assets import asset_paths
from jaxtune.generate import greedy_generate

# The last "before" accuracy of this process, shown next to the "after" one.
_BEFORE: dict[str, float] = {}


@dataclasses.dataclass(frozen=True)
class EvalResult:
  accuracy: float
  correct: int
  total: int
  per_kind: dict[str, float]
  prompts: list[str]
  answers: list[str]
  outputs: list[str]


def max_answer_tokens(tokenizer, answers: Sequence[str]) -> int:
  return max(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def exact_match(model, tokenizer, records: Sequence[dict], *, batch_size: int = 64) -> EvalResult:
  """Greedy replies to each record's prompt, compared (stripped) with its last assistant turn."""
  convs, answers = zip(*(tasks.prompt_and_answer(r) for r in records))
  # Room for the longest answer, its end-of-turn token and a little slack.
  budget = max_answer_tokens(tokenizer, answers) + 4
  outputs = greedy_generate(model, tokenizer, list(convs), budget, batch_size=batch_size)
  hits = [o.strip() == a.strip() for o, a in zip(outputs, answers)]
  prompts = [c[-1]["content"] for c in convs]
  by_kind: dict[str, list[bool]] = defaultdict(list)
  for p, h in zip(prompts, hits):
    by_kind[tasks.kind_of(p)].append(h)
  per_kind = {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
  return EvalResult(accuracy=sum(hits) / len(hits), correct=sum(hits), total=len(hits), per_kind=per_kind,
                    prompts=prompts, answers=list(answers), outputs=outputs)


def heldout_records(cfg) -> list[dict]:
  recs = tasks.read_jsonl(str(asset_paths(cfg.demo.cache_dir).heldout_path))
  return recs[:cfg.demo.heldout_examples]


def _summary(label: str, r: EvalResult) -> str:
  kinds = "  ".join(f"{k} {v:.0%}" for k, v in r.per_kind.items())
  return f"[demo] held-out exact match {label}: {r.accuracy:.1%} ({r.correct}/{r.total})   {kinds}"


def _samples(r: EvalResult, n: int) -> list[str]:
  """Up to n held-out samples, one of each task kind first."""
  seen, order = set(), []
  for i, p in enumerate(r.prompts):
    if tasks.kind_of(p) not in seen:
      seen.add(tasks.kind_of(p))
      order.append(i)
  order += [i for i in range(len(r.prompts)) if i not in order]
  lines = []
  for i in order[:n]:
    mark = "ok " if r.outputs[i].strip() == r.answers[i].strip() else "bad"
    lines.append(f"  [{mark}] {r.prompts[i]!r:<24} -> {r.outputs[i]!r:<14} (expected {r.answers[i]!r})")
  return lines


def _save(cfg, key: str, r: EvalResult) -> None:
  path = os.path.join(cfg.run.dir, "demo_eval.json")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError):
    data = {}
  data[key] = {"accuracy": r.accuracy, "correct": r.correct, "total": r.total, "per_kind": r.per_kind}
  os.makedirs(cfg.run.dir, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=2, sort_keys=True)


def report_before(cfg, model, tokenizer, *, log=print) -> float:
  """Prints (and returns) the base model's held-out exact match."""
  r = exact_match(model, tokenizer, heldout_records(cfg))
  _BEFORE["accuracy"] = r.accuracy
  log(_summary("before tuning", r))
  for line in _samples(r, min(cfg.demo.show, 3)):
    log(line)
  _save(cfg, "before", r)
  return r.accuracy


def report_after(cfg, model, tokenizer, export_dir, *, log=print) -> float:
  """Prints (and returns) the tuned model's held-out exact match, samples and the export path."""
  r = exact_match(model, tokenizer, heldout_records(cfg))
  before = f" (before: {_BEFORE['accuracy']:.1%})" if "accuracy" in _BEFORE else ""
  log(_summary("after tuning", r) + before)
  for line in _samples(r, cfg.demo.show):
    log(line)
  _save(cfg, "after", r)
  if export_dir:
    export_dir = os.path.abspath(export_dir)
    log(f"[demo] tuned model exported to {export_dir}")
    log(f"[demo] try it: jaxtune generate --model {export_dir} --prompt 'Reverse: jaxtune'")
  return r.accuracy
