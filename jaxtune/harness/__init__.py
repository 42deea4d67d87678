"""Standard benchmarks through lm-evaluation-harness, on jaxtune's own model.

  scoring.py  log-likelihoods of continuations: length-bucketed, sharded forward passes
  lm.py       JaxtuneLM: lm-eval's LM interface (loglikelihood, loglikelihood_rolling, generate_until)
  run.py      task lookup (local YAMLs with include_path), simple_evaluate, flat metric names

`evaluate_model` is `jaxtune eval`; `HarnessHook` (jaxtune.train.hooks) scores
`eval.harness_tasks` at eval points during training. lm-eval is an optional extra:
`pip install 'jaxtune[eval]'`.
"""

from __future__ import annotations

import logging
from typing import Any

from jaxtune import io
from jaxtune.errors import ConfigError, UsageError

log = logging.getLogger(__name__)


def require_lm_eval() -> None:
  try:
    import lm_eval  # noqa: F401
  except ImportError:
    raise UsageError("lm-evaluation-harness is not installed: pip install 'jaxtune[eval]' (or lm-eval)") from None


def evaluate_model(model_path: str, tasks: str, *, out: str | None = None, limit: float | None = None,
                   num_fewshot: int | None = None, include_path: str = "", batch_size: int = 16,
                   apply_chat_template: bool = False, chat_template: str = "", log_samples: bool = False,
                   max_length: int | None = None, seed: int | None = None, mesh=None, dtype: str | None = None
                   ) -> dict[str, Any]:
  """`jaxtune eval`: the model of an HF dir or a run dir (its latest checkpoint, LoRA applied) on lm-eval
  tasks; results.json to `out` (process 0); returns lm-eval's results dict."""
  require_lm_eval()
  import jax

  from jaxtune import rundir
  from jaxtune.generate import load_model
  from jaxtune.harness.lm import JaxtuneLM
  from jaxtune.harness.run import evaluate, parse_tasks, summary, table, task_manager, to_json

  names = parse_tasks(tasks)
  task_manager(names, include_path)  # an unknown task fails before the model loads
  model, tokenizer, stop_ids = load_model(model_path, chat_template, mesh=mesh, dtype=dtype)
  hf_config = (rundir.read_hf_config(model_path) if rundir.is_run_dir(model_path)
               else getattr(model, "hf_config", None) or {})
  lm = JaxtuneLM(model, tokenizer, stop_ids, hf_config=hf_config, batch_size=batch_size, max_length=max_length,
                 seed=seed or 0, name=model_path)
  results = evaluate(lm, names, limit=limit, num_fewshot=num_fewshot, include_path=include_path,
                     apply_chat_template=apply_chat_template, log_samples=log_samples, seed=seed)
  results.setdefault("config", {}).update({"model": "jaxtune", "model_args": model_path, "batch_size": batch_size,
                                           "max_length": lm.max_length})
  if jax.process_index() == 0:
    print(table(results))
    if out:
      io.write_text(out, to_json(results))
      log.info("results written to %s", out)
  for k, v in summary(results).items():
    log.info("%s = %.4f", k, v)
  return results


def check_tasks(e) -> list[str]:
  """eval.harness_tasks (config section `e`) parsed, each known to lm-eval (a user error naming the unknown
  ones, or saying lm-eval is not installed)."""
  from jaxtune.harness.run import parse_tasks, task_manager
  try:
    import lm_eval  # noqa: F401
  except ImportError:
    raise ConfigError("config key 'eval.harness_tasks' is set but lm-evaluation-harness is not installed: "
                      "pip install 'jaxtune[eval]'") from None
  tasks = parse_tasks(e.harness_tasks)
  task_manager(tasks, e.harness_include_path)
  return tasks


class HarnessEval:
  """`harness(model) -> {eval_<task>_<metric>: value}`: eval.harness_tasks scored during training, on the
  training model (sharded as it trains, in its compute dtype; a LoRA model with its adapters). Task names are
  checked when it is built, before the first step."""

  def __init__(self, cfg, tokenizer, model_dir: str, hf_config: dict[str, Any]):
    from jaxtune.generate import stop_token_ids
    e = cfg.eval
    self.tasks = check_tasks(e)
    self.tokenizer, self.hf_config = tokenizer, hf_config
    self.stop_ids = stop_token_ids(tokenizer, model_dir)
    fewshot = None if e.harness_num_fewshot < 0 else e.harness_num_fewshot
    self.kw = dict(limit=e.harness_limit or None, num_fewshot=fewshot,
                   include_path=e.harness_include_path, apply_chat_template=e.harness_chat_template, bootstrap_iters=0)
    self.batch_size = e.batch_size

  def __call__(self, model) -> dict[str, float]:
    from jaxtune.harness.lm import JaxtuneLM
    from jaxtune.harness.run import evaluate, summary
    lm = JaxtuneLM(model, self.tokenizer, self.stop_ids, hf_config=self.hf_config, batch_size=self.batch_size)
    return summary(evaluate(lm, self.tasks, **self.kw))
