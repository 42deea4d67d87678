"""Running lm-evaluation-harness tasks on a `JaxtuneLM`: task lookup, the evaluation, its results.

Task names are looked up first among `include_path`'s YAMLs alone (indexing lm-eval's ~15,000 built-in
tasks takes seconds), then among the built-in ones; an unknown name is a UsageError naming the closest
known ones. `summary` turns lm-eval's results into flat metric names for metrics.jsonl:
`eval_<task>_<metric>` (and `_<filter>` for a filter other than `none`), e.g. `eval_arc_easy_acc_norm`,
`eval_gsm8k_exact_match_strict-match`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import math
from typing import Any, Sequence

from jaxtune import io
from jaxtune.errors import UsageError

log = logging.getLogger(__name__)


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
  names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
  names = [t for t in names if t]
  if not names:
    raise UsageError("no harness task given (--tasks T[,T...] / eval.harness_tasks)")
  return names


@functools.lru_cache(maxsize=8)
def _manager(include_path: str, defaults: bool):
  from lm_eval.tasks import TaskManager
  return TaskManager(include_path=include_path or None, include_defaults=defaults)


def task_manager(tasks: Sequence[str], include_path: str = ""):
  """An lm-eval TaskManager that knows every task in `tasks` (include_path's alone when it has them all)."""
  if include_path and not io.is_dir(include_path):
    raise UsageError(f"the task directory {include_path!r} (--include-path / eval.harness_include_path) is not a "
                     "directory")
  known: list[str] = []
  if include_path:
    tm = _manager(include_path, False)
    if not _unknown(tasks, tm.all_tasks):
      return tm
    known = tm.all_tasks
  tm = _manager(include_path, True)
  missing = _unknown(tasks, tm.all_tasks)
  if missing:
    close = sorted({c for t in missing for c in difflib.get_close_matches(t, tm.all_tasks + known, n=3)})
    raise UsageError(f"unknown lm-eval task(s) {missing}" + (f"; did you mean {close}?" if close else "")
                     + ("" if include_path else "; local task YAMLs need --include-path DIR"))
  return tm


def _unknown(tasks: Sequence[str], known: Sequence[str]) -> list[str]:
  from lm_eval.utils import pattern_match
  return [t for t in tasks if not pattern_match([t], list(known))]


@contextlib.contextmanager
def _lm_eval_bars_off():
  """lm-eval's per-task bar over the documents off: the requests show jaxtune's progress instead."""
  from lm_eval.api import task
  bar = task.tqdm
  task.tqdm = functools.partial(bar, disable=True)
  try:
    yield
  finally:
    task.tqdm = bar


def evaluate(lm, tasks: str | Sequence[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
             include_path: str = "", apply_chat_template: bool = False, log_samples: bool = False,
             bootstrap_iters: int = 100_000, seed: int | None = None) -> dict[str, Any]:
  """lm-eval's `simple_evaluate` of `lm` on `tasks`: its results dict (`results`, `configs`, `n-shot`,
  `versions`, and `samples` with log_samples). `seed` (few-shot sampling and the other seeds lm-eval sets)
  defaults to lm-eval's own seeds, so that few-shot contexts are the ones its other backends see."""
  from lm_eval import simple_evaluate
  names = parse_tasks(tasks)
  tm = task_manager(names, include_path)
  seeds = {} if seed is None else dict(random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                       fewshot_random_seed=seed)
  with _lm_eval_bars_off():
    return simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit or None, task_manager=tm,
                           apply_chat_template=apply_chat_template, fewshot_as_multiturn=apply_chat_template,
                           log_samples=log_samples, bootstrap_iters=bootstrap_iters, **seeds)


def summary(results: dict[str, Any]) -> dict[str, float]:
  """{eval_<task>_<metric>[_<filter>]: value} of every numeric metric in lm-eval's results (no stderrs)."""
  out = {}
  for task, metrics in results.get("results", {}).items():
    for k, v in metrics.items():
      metric, _, filt = k.partition(",")
      if "_stderr" in metric or not filt or isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      if isinstance(v, float) and not math.isfinite(v):
        continue
      out[f"eval_{task}_{metric}" + ("" if filt == "none" else f"_{filt}")] = float(v)
  return out


def to_json(results: dict[str, Any]) -> str:
  from lm_eval.utils import handle_non_serializable
  return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def table(results: dict[str, Any]) -> str:
  """lm-eval's markdown table of the results (and of the groups, if any)."""
  from lm_eval.utils import make_table
  return make_table(results) + ("\n" + make_table(results, "groups") if results.get("groups") else "")
