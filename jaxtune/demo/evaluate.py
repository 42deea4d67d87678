"""Held-out exact-match accuracy of the demo, printed before and after tuning."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from typing import Sequence

from jaxtune.demo import tasks

_LOG = logging.getLogger(__name__)

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


def from_samples(samples: Sequence[dict]) -> EvalResult:
  """Accuracy overall and per task kind from eval-prompt samples (jaxtune.train.prompt_eval)."""
  prompts = [s["messages"][-1]["content"] for s in samples]
  hits = [bool(s["exact"]) for s in samples]
  by_kind: dict[str, list[bool]] = defaultdict(list)
  for p, h in zip(prompts, hits):
    by_kind[tasks.kind_of(p)].append(h)
  per_kind = {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
  return EvalResult(accuracy=sum(hits) / len(hits), correct=sum(hits), total=len(hits), per_kind=per_kind,
                    prompts=prompts, answers=[s["reference"] for s in samples],
                    outputs=[s["completion"] for s in samples])


def exact_match(cfg, model, tokenizer) -> EvalResult:
  """Greedy replies to the held-out prompts (eval.prompts), the same sampling the training loop runs."""
  from jaxtune.train.prompt_eval import PromptSampler
  _, samples = PromptSampler(cfg, tokenizer, cfg.model.path)(model)
  return from_samples(samples)


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


def report_before(cfg, model, tokenizer, *, log=_LOG.info) -> float:
  """Prints (and returns) the base model's held-out exact match."""
  r = exact_match(cfg, model, tokenizer)
  _BEFORE["accuracy"] = r.accuracy
  log(_summary("before tuning", r))
  for line in _samples(r, min(cfg.demo.show, 3)):
    log(line)
  _save(cfg, "before", r)
  return r.accuracy


def report_after(cfg, model, tokenizer, export_dir, *, samples: Sequence[dict] | None = None, log=_LOG.info) -> float:
  """Prints (and returns) the tuned model's held-out exact match, samples and the export path.

  `samples`: the training loop's last eval-prompt samples of this model (sampled again if None)."""
  r = from_samples(samples) if samples else exact_match(cfg, model, tokenizer)
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


def preference_accuracy(cfg, model, tokenizer, pairs_path: str) -> float:
  """The fraction of pairs of `pairs_path` whose chosen reply `model` gives a higher log-prob than the
  rejected one (its own preference, meaningful before DPO as after)."""
  import dataclasses as dc

  import jax
  import numpy as np

  from jaxtune.config import SourceCfg
  from jaxtune.data.pipeline import build_pipeline
  from jaxtune.train import loss as loss_lib

  data = dc.replace(cfg.data, train=(SourceCfg(path=pairs_path, format="preference"),), eval=(), eval_fraction=0.0)
  pipe = build_pipeline(data, tokenizer, batch_size=cfg.train.batch_size, seed=0, preference=True)
  fn = jax.jit(lambda b: loss_lib.sequence_logps(model, b, b["seq_ids"].shape[1])[0])
  logp = np.full(len(pipe.store.offsets) - 1, np.nan)
  for batch in pipe.one_pass():
    out = np.asarray(fn(batch))
    sel = batch["seq_ids"] >= 0
    logp[batch["seq_ids"][sel]] = out[sel]
  chosen, rejected = logp[0::2], logp[1::2]
  return float(np.mean(chosen > rejected))


def report_preferences(label: str, cfg, model, tokenizer, pairs_path: str, reward_accuracy: float | None, *,
                       log=_LOG.info) -> float:
  """Prints the held-out preference figures of `model`: its own log-prob preference and the DPO reward
  accuracy (None before training: every reward margin is then 0)."""
  pref = preference_accuracy(cfg, model, tokenizer, pairs_path)
  reward = ("50% (before training every reward margin is 0: a tie, counted half)" if reward_accuracy is None
            else f"{reward_accuracy:.1%}")
  log(f"[demo] held-out pairs {label}: reward accuracy {reward}; log p(chosen) > log p(rejected) on {pref:.1%}")
  return pref
