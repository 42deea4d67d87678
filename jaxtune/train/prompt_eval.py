"""Eval prompts sampled during training: replies, exact match against references.

`eval.prompts` names conversations in any data-source form (a JSONL of
`{"messages": [...], "reference": "..."}` is the usual one; `{"prompt": "..."}`
works too). The prompt is the conversation up to its last turn when that turn
is the assistant's, and that turn is the reference unless `reference` is given.
A reply matches when it equals the reference after stripping surrounding
whitespace. Every process decodes (the model is sharded), process 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

from jaxtune.data import records
from jaxtune.data.examples import DataError

log = logging.getLogger(__name__)

_NO_REFERENCE_BUDGET = 256  # new tokens when eval.max_new_tokens = 0 and a prompt has no reference
_REFERENCE_SLACK = 8  # extra new tokens over the longest reference (its end-of-turn token and a little room)


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
  messages: list[dict]  # the conversation to reply to
  reference: str | None
  where: str  # file:line


def _to_prompt(rec: Any) -> tuple[list[dict], str | None]:
  if isinstance(rec, dict) and isinstance(rec.get("prompt"), str) and "completion" not in rec:
    rec = {**rec, "messages": [{"role": "user", "content": rec["prompt"]}]}
  msgs = records.to_messages(rec, "auto", require_reply=False)
  reference = rec.get("reference") if isinstance(rec, dict) else None
  if reference is not None and not isinstance(reference, str):
    raise records.MalformedRecord("bad_reference", f"'reference' is a {type(reference).__name__}")
  if msgs[-1]["role"] == "assistant":
    reference = msgs[-1]["content"] if reference is None else reference
    msgs = msgs[:-1]
  if not msgs or msgs[-1]["role"] not in ("user", "tool"):
    raise records.MalformedRecord("no_prompt", "the conversation has no user turn to reply to")
  return msgs, reference


def read_eval_prompts(path: str, *, strict: bool = False) -> list[EvalPrompt]:
  """The prompts of `path` (a file, dir or glob; local or remote). Malformed records are skipped
  with a warning naming file:line, or fail when `strict`; no valid prompt at all is an error."""
  out, bad = [], []
  for file in records.expand(path):
    for f, n, rec in records.read_records(file):
      try:
        msgs, ref = _to_prompt(rec)
      except records.MalformedRecord as e:
        if strict:
          raise DataError(f"{records.where(f, n)}: malformed eval prompt ({e}); data.strict is set") from e
        bad.append(f"{records.where(f, n)}: {e}")
        continue
      out.append(EvalPrompt(messages=msgs, reference=ref, where=records.where(f, n)))
  if bad:
    log.warning("eval.prompts: skipped %d malformed record(s), e.g. %s", len(bad), "; ".join(bad[:3]))
  if not out:
    raise DataError(f"eval.prompts {path!r}: no usable prompt" + (f" ({bad[0]})" if bad else ""))
  return out


def exact_match(completion: str, reference: str) -> bool:
  return completion.strip() == reference.strip()


def new_token_budget(tokenizer, prompts: Sequence[EvalPrompt], max_new_tokens: int = 0) -> int:
  """`max_new_tokens`, or when 0 the longest reference's length + a few tokens."""
  if max_new_tokens > 0:
    return max_new_tokens
  refs = [p.reference for p in prompts]
  if any(r is None for r in refs):
    return _NO_REFERENCE_BUDGET
  return max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs) + _REFERENCE_SLACK


def sample(model, tokenizer, prompts: Sequence[EvalPrompt], *, max_new_tokens: int, temperature: float = 0.0,
           seed: int = 0, batch_size: int = 64, stop_ids: Sequence[int] | None = None
           ) -> tuple[dict[str, float], list[dict]]:
  """(metrics, samples): one sample per prompt with its messages, completion, reference and
  `exact`; metrics hold `eval_exact_match` over the prompts with a reference (if any)."""
  from jaxtune.generate import generate

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
    from jaxtune.generate import stop_token_ids
    self.prompts = read_eval_prompts(cfg.eval.prompts, strict=cfg.data.strict)
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
