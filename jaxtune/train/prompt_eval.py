"""Eval prompts sampled during training: replies, exact match against references.

`eval.prompts` names conversations in any data-source form, read by
`jaxtune.data.prompts` (a trailing assistant turn or a `reference` field is the
reference answer). A reply matches when it equals the reference after stripping surrounding
whitespace. Every process decodes (the model is sharded), process 0 writes.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from jaxtune.data.prompts import Prompt, read_prompts
from jaxtune.generate import generate, stop_token_ids

log = logging.getLogger(__name__)

_NO_REFERENCE_BUDGET = 256  # new tokens when eval.max_new_tokens = 0 and a prompt has no reference
_REFERENCE_SLACK = 8  # extra new tokens over the longest reference (its end-of-turn token and a little room)


def exact_match(completion: str, reference: str) -> bool:
  return completion.strip() == reference.strip()


def new_token_budget(tokenizer, prompts: Sequence[Prompt], max_new_tokens: int = 0) -> int:
  """`max_new_tokens`, or when 0 the longest reference's length + a few tokens."""
  if max_new_tokens > 0:
    return max_new_tokens
  refs = [p.reference for p in prompts]
  if any(r is None for r in refs):
    return _NO_REFERENCE_BUDGET
  return max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs) + _REFERENCE_SLACK


def sample(model, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0, batch_size: int = 64, stop_ids: Sequence[int] | None = None
           ) -> tuple[dict[str, float], list[dict]]:
  """(metrics, samples): one sample per prompt with its messages, completion, reference and
  `exact`; metrics hold `eval_exact_match` over the prompts with a reference (if any)."""
  outs = generate(model, tokenizer, [p.messages for p in prompts], max_new_tokens=max_new_tokens,
                  temperature=temperature, seed=seed, batch_size=batch_size, stop_ids=stop_ids)
  samples, hits = [], []
  for p, o in zip(prompts, outs):
    s = {"messages": p.messages, "completion": o["completion"], "reference": p.reference}
    if p.reference is not None:
      s["exact"] = exact_match(o["completion"], p.reference)
      hits.append(s["exact"])
    samples.append(s)
  metrics = {"eval_exact_match": sum(hits) / len(hits)} if hits else {}
  return metrics, samples


class PromptSampler:
  """`sampler(model) -> (metrics, samples)` with the config's budget, temperature and seed.

  Replies stop at the eos ids `model_dir` declares, the tokenizer's eos and the end-of-turn
  markers it knows (a base model tuned on a chat template learns to end turns with the
  template's marker before its generation config says so)."""

  def __init__(self, cfg, tokenizer, model_dir: str | None = None):
    self.prompts = read_prompts(cfg.eval.prompts, strict=cfg.data.strict)
    self.tokenizer = tokenizer
    self.stop_ids = stop_token_ids(tokenizer, model_dir, end_of_turn=True)
    self.max_new_tokens = new_token_budget(tokenizer, self.prompts, cfg.eval.max_new_tokens)
    self.temperature = cfg.eval.temperature
    self.seed = cfg.train.seed
    self.batch_size = cfg.eval.batch_size

  def __call__(self, model) -> tuple[dict[str, float], list[dict]]:
    return sample(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                  temperature=self.temperature, seed=self.seed, batch_size=self.batch_size, stop_ids=self.stop_ids)


def samples_markdown(samples: Sequence[dict], n: int) -> str:
  """The first n samples as a markdown table (TensorBoard's text plugin renders it)."""

  def cell(x: Any) -> str:
    return "" if x is None else str(x).replace("|", "\\|").replace("\n", "<br>")

  rows = ["| prompt | completion | reference | exact |", "|---|---|---|---|"]
  for s in samples[:n]:
    rows.append(f"| {cell(s['messages'][-1]['content'])} | {cell(s['completion'])} | {cell(s['reference'])} "
                f"| {cell(s.get('exact'))} |")
  return "\n".join(rows)
