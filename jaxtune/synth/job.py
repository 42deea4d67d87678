"""`jaxtune synth`: a teacher answers prompts at scale; the answers that pass a check become `messages` records
ready for `jaxtune train`.

The prompts (any form `jaxtune.data.prompts` reads, with an optional `reference`) are streamed a chunk at a
time: each chunk's `n` samples per prompt are decoded by `jaxtune.generate.generate_ids` (length-bucketed
batches, data-parallel over the devices of the mesh the model is sharded on, every host decoding the same
global batch), checked and chosen by `jaxtune.synth.verify`, and appended to OUT in input order by
`jaxtune.synth.output` (only process 0 writes). Host memory is bounded by the chunk, whatever the file sizes.

A prompt's id is its record's `id` (a string or an integer) when it has one, else its 0-based position among
the prompts of the source. Sample s of a prompt is drawn with the key of (seed, id, s) (see
`jaxtune.generate`), so the samples do not depend on the chunk, the batch, the device count or the mesh, nor
on whether the job was resumed: a restarted job skips the prompts it finished and ends with the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from typing import Any, Iterator, Sequence

from jaxtune import log as log_lib
from jaxtune.data.prompts import Prompt, iter_prompts
from jaxtune.errors import DataError, UsageError
from jaxtune.generate import encode_prompts, generate_ids, pad_id_for
from jaxtune.synth import verify as verify_lib
from jaxtune.synth.output import JobFiles

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What decides the output; a job resumes only with the same settings (OUT.jsonl.progress holds them)."""
  model: str
  prompts: str
  n: int = 1
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  max_new_tokens: int = 256
  seed: int = 0
  system: str | None = None
  chat_template: str = ""
  verify: str | None = None
  keep: str = "all"
  token_ids: bool = False  # records also carry `completion_ids`

  def __post_init__(self):
    bad = [f"--{k} {v}" for k, v, ok in (
        ("n", self.n, self.n >= 1), ("max-new-tokens", self.max_new_tokens, self.max_new_tokens >= 1),
        ("temperature", self.temperature, self.temperature >= 0), ("top-p", self.top_p, 0 < self.top_p <= 1),
        ("top-k", self.top_k, self.top_k >= 0)) if not ok]
    if bad:
      raise UsageError(f"{', '.join(bad)}: need --n >= 1, --max-new-tokens >= 1, --temperature >= 0, "
                       "0 < --top-p <= 1, --top-k >= 0")
    if self.keep not in verify_lib.KEEP:
      raise UsageError(f"--keep {self.keep!r}: expected one of {', '.join(verify_lib.KEEP)}")

  def generation(self) -> dict[str, Any]:
    """The settings each record carries."""
    return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclasses.dataclass(frozen=True)
class Options:
  """How the job runs; the output does not depend on these."""
  batch_size: int = 64  # rows decoded together (global, over all devices)
  chunk: int = 256  # prompts read, decoded and written at a time
  strict: bool = False  # a malformed prompt record is an error instead of being skipped
  overwrite: bool = False  # start again even if OUT holds a previous job

  def __post_init__(self):
    if self.batch_size < 1 or self.chunk < 1:
      raise UsageError(f"--batch-size {self.batch_size}, --chunk {self.chunk}: both must be >= 1")


@dataclasses.dataclass(frozen=True)
class _Item:
  id: Any
  key: int  # uint32 from the id: the first half of each sample's random key
  prompt: Prompt
  messages: list[dict]  # the conversation the teacher answers (--system added)


def id_key(rid: Any) -> int:
  """The uint32 a prompt id contributes to its samples' keys: a non-negative integer below 2**32 itself,
  anything else a hash of its JSON."""
  if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**32:
    return rid
  return int.from_bytes(hashlib.blake2b(json.dumps(rid).encode(), digest_size=4).digest(), "little")


def _record_id(prompt: Prompt, position: int) -> Any:
  rid = prompt.record.get("id") if isinstance(prompt.record, dict) else None
  return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else position


class _Skipped(list):
  """`iter_prompts`' list of malformed records: counts them all, keeps the first few."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def append(self, item: str) -> None:
    self.count += 1
    if self.count <= 3:
      super().append(item)


def _items(settings: Settings, strict: bool, skipped: _Skipped) -> Iterator[_Item]:
  system = [{"role": "system", "content": settings.system}] if settings.system else []
  for i, p in enumerate(iter_prompts(settings.prompts, strict=strict, bad=skipped)):
    rid = _record_id(p, i)
    msgs = p.messages if p.messages[0]["role"] == "system" else system + p.messages
    yield _Item(id=rid, key=id_key(rid), prompt=p, messages=msgs)


def _skip_done(items: Iterator[_Item], done: int, done_ids: Iterator[Any] | None, files: JobFiles | None) -> None:
  """Consumes the `done` prompts a previous run finished, checking their ids when they are known."""
  ids = done_ids if done_ids is not None else itertools.repeat(None, done)
  for n, want in enumerate(ids):
    item = next(items, None)
    if item is None:
      raise UsageError(f"{files.progress if files else 'the progress file'} lists {done} finished prompts but "
                       f"the prompts hold only {n}: the prompts changed; pass --overwrite to start again")
    if want is not None and item.id != want:
      raise UsageError(f"prompt {n} ({item.prompt.where}) has id {item.id!r} but {files.progress} finished "
                       f"{want!r} there: the prompts changed since the job started; pass --overwrite to start "
                       "again, or choose another --out")


class _Stats:
  """Counts of this run, for the progress bar."""

  def __init__(self):
    self.t0 = time.perf_counter()
    self.new_tokens = 0
    self.kept = 0

  def postfix(self, bar) -> None:
    dt = max(time.perf_counter() - self.t0, 1e-9)
    bar.set_postfix(tokens_per_s=f"{self.new_tokens / dt:,.0f}", kept=self.kept)


def _decode(model, stop_ids, settings: Settings, opts: Options, items: Sequence[_Item], todo: list[tuple[int, int]],
            prompt_ids: list[list[int]], pad_id: int) -> list[list[int]]:
  """The completions (token ids, cut after a stop token) of samples (item index, sample index)."""
  return generate_ids(model, [prompt_ids[j] for j, _ in todo], settings.max_new_tokens, stop_ids, pad_id,
                      batch_size=opts.batch_size, temperature=settings.temperature, top_p=settings.top_p,
                      top_k=settings.top_k, seed=settings.seed, sample_ids=[(items[j].key, s) for j, s in todo])


def _encode(tokenizer, items: Sequence[_Item]) -> list[list[int]]:
  try:
    return encode_prompts(tokenizer, [it.messages for it in items])
  except Exception:  # noqa: BLE001 - find the conversation the chat template refused, and say why
    for it in items:
      try:
        encode_prompts(tokenizer, [it.messages])
      except Exception as e:  # noqa: BLE001
        raise DataError(f"{it.prompt.where}: the chat template refused this conversation "
                        f"({type(e).__name__}: {e})") from None
    raise


def _chunk(model, tokenizer, stop_ids, settings: Settings, opts: Options, check, items: Sequence[_Item],
           stats: _Stats) -> tuple[list[dict], list[dict]]:
  """(records to write, progress rows) of one chunk of prompts: every sample decoded, checked, chosen."""
  prompt_ids = _encode(tokenizer, items)
  pad_id = pad_id_for(tokenizer, stop_ids)
  samples: list[dict[int, list[int]]] = [{} for _ in items]  # per item: sample index -> token ids
  passed: list[dict[int, bool]] = [{} for _ in items]
  texts: list[dict[int, str]] = [{} for _ in items]
  # keep=first: one round per sample index over the prompts with no passing sample yet; else one round.
  rounds = ([[(j, s) for j in range(len(items))] for s in range(settings.n)] if settings.keep == "first"
            else [[(j, s) for j in range(len(items)) for s in range(settings.n)]])
  for todo in rounds:
    if settings.keep == "first":
      todo = [(j, s) for j, s in todo if not any(passed[j].values())]
      if not todo:
        break
    outs = _decode(model, stop_ids, settings, opts, items, todo, prompt_ids, pad_id)
    for (j, s), ids in zip(todo, outs):
      text = tokenizer.decode(ids, skip_special_tokens=True)
      samples[j][s], texts[j][s] = ids, text
      passed[j][s] = verify_lib.passes(check, items[j].messages, text, items[j].prompt.reference)
      stats.new_tokens += len(ids)
  records, rows = [], []
  needs_reference = verify_lib.needs_reference(settings.verify)
  for j, it in enumerate(items):
    order = sorted(samples[j])
    keep = [order[i] for i in verify_lib.kept([passed[j][s] for s in order], settings.keep)]
    truncated = sum(1 for s in order if _finish(samples[j][s], stop_ids) == "length")
    for s in keep:
      records.append(_record(it, s, texts[j][s], samples[j][s], settings, stop_ids))
    rows.append({"id": it.id, "samples": len(order), "passed": sum(passed[j].values()), "kept": len(keep),
                 "new_tokens": sum(len(samples[j][s]) for s in order), "truncated": truncated,
                 "empty": sum(1 for s in order if not texts[j][s].strip()),
                 "no_reference": int(needs_reference and it.prompt.reference is None)})
  stats.kept += len(records)
  return records, rows


def _finish(ids: list[int], stop_ids: Sequence[int]) -> str:
  """"stop" when the reply ended with a stop token, else "length" (cut at --max-new-tokens)."""
  return "stop" if ids and ids[-1] in stop_ids else "length"


def _record(it: _Item, s: int, text: str, ids: list[int], settings: Settings, stop_ids) -> dict[str, Any]:
  rec: dict[str, Any] = {"id": it.id, "sample": s,
                         "messages": list(it.messages) + [{"role": "assistant", "content": text}]}
  if it.prompt.reference is not None:
    rec["reference"] = it.prompt.reference
  rec["finish"] = _finish(ids, stop_ids)
  if settings.token_ids:
    rec["completion_ids"] = ids
  rec["generation"] = settings.generation()
  return rec


def _broadcast_done(done: int) -> int:
  """Process 0's count of finished prompts, on every process (-1: process 0 failed to start)."""
  import jax
  if jax.process_count() == 1:
    return done
  import numpy as np
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int64(done)))


class Job:
  """A synth job, started: `--verify` parsed, OUT opened or resumed by process 0, and every process agreed on
  how many prompts a previous run finished. Started before the model loads, so that a job that cannot resume
  fails at once. `run` then does the work; every process runs the same calls and process 0 writes."""

  def __init__(self, settings: Settings, out: str, opts: Options = Options()):
    import jax
    self.settings, self.out, self.opts = settings, out, opts
    self.check = verify_lib.parse_verify(settings.verify)
    self.files = JobFiles(out, dataclasses.asdict(settings)) if jax.process_index() == 0 else None
    done = -1
    try:
      if self.files is not None:
        done = self.files.start(overwrite=opts.overwrite)
    finally:
      done = _broadcast_done(done)
    if done < 0:
      raise UsageError("process 0 could not start the synth job (see its error)")
    self.done = done

  def run(self, model, tokenizer, stop_ids: Sequence[int]) -> dict[str, Any]:
    """Decodes, checks and writes the prompts not finished yet; returns the stats of the whole job (written to
    OUT.jsonl.stats.json; {} on processes other than 0). `model` may be sharded over a mesh."""
    settings, opts, files, done = self.settings, self.opts, self.files, self.done
    if settings.n > 1 and settings.temperature == 0:
      log.warning("--n %d with --temperature 0: greedy decoding gives %d identical samples per prompt", settings.n,
                  settings.n)
    skipped = _Skipped()
    items = _items(settings, opts.strict, skipped)
    if done:
      log.info("synth: resuming %s: %d prompts already finished", self.out, done)
      _skip_done(items, done, files.done_ids() if files is not None else None, files)
    stats = _Stats()
    try:
      with log_lib.progress(desc="synth", unit="prompts", initial=done) as bar:
        while chunk := list(itertools.islice(items, opts.chunk)):
          records, rows = _chunk(model, tokenizer, stop_ids, settings, opts, self.check, chunk, stats)
          if files is not None:
            files.write(records, rows)
          bar.update(len(chunk))
          stats.postfix(bar)
    finally:
      if files is not None:
        files.close()
    if skipped.count:
      log.warning("%s: skipped %d malformed record(s), e.g. %s", settings.prompts, skipped.count,
                  "; ".join(skipped))
    if files is None:
      return {}
    summary = files.summary({"malformed_records": skipped.count})
    if summary["prompts"] == 0:
      raise DataError(f"prompts {settings.prompts!r}: no usable prompt" + (f" ({skipped[0]})" if skipped else ""))
    log.info("synth: %d prompts, %d samples, %d passed, %d kept (kept per prompt: %s); %s (stats in %s)",
             summary["prompts"], summary["samples"], summary["passed"], summary["kept"],
             ", ".join(f"{k}: {v}" for k, v in summary["kept_per_prompt"].items()), self.out, files.stats_path)
    return summary


def run(model, tokenizer, stop_ids: Sequence[int], settings: Settings, out: str,
        opts: Options = Options()) -> dict[str, Any]:
  """Starts (or resumes) a synth job writing `out` and runs it; returns its stats (see `Job`)."""
  return Job(settings, out, opts).run(model, tokenizer, stop_ids)
