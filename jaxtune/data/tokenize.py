"""Chunks of records -> one outcome per record (kept sequences, or why it is dropped), in order.

`run_chunk(job, payloads)` is the pure part: chat template, masks, pre-tokenized checks and
fitting to seq_len, for one chunk of converted records. `Pool` runs chunks in this process
or in spawned worker processes (`data.tokenize_workers`) and hands the outcomes back in
the order the chunks were submitted, so the examples (and every count and sample of the
stats) are the same with any number of workers.

A worker gets the tokenizer once, pickled with its chat template and added tokens; it
imports neither jax nor the model code. Workers run the Rust tokenizer single-threaded
(TOKENIZERS_PARALLELISM=false): the processes are the parallelism.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from jaxtune.data import chat, packing, records

AUTO_MAX_WORKERS = 16
AUTO_AFTER_RECORDS = 8192  # auto: records tokenized in this process before a pool is worth its start-up
IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker (bounds the memory of results not yet applied)


class Kept(NamedTuple):
  """A record's example: its sequences ((ids int32, mask uint8) each: one, or a pair's chosen and rejected)."""
  sequences: tuple
  truncated: bool
  not_rendered: tuple = ()  # roles of system/user/tool messages the template did not render
  reasoning: bool = False
  tool_calls: bool = False


class Dropped(NamedTuple):
  """Why a record yields no example; `malformed`: it failed schema/JSON checks."""
  reason: str
  detail: str = ""
  malformed: bool = False

  def __str__(self) -> str:
    return f"{self.reason}: {self.detail}" if self.detail else self.reason


def dropped(e: Exception) -> Dropped:
  """A MalformedRecord / DropExample as a Dropped (exceptions do not cross processes intact)."""
  return Dropped(e.reason, e.detail, isinstance(e, records.MalformedRecord))


@dataclasses.dataclass(frozen=True)
class Job:
  """What tokenizing a record needs besides the record (sent once to each worker)."""
  tokenizer: Any
  seq_len: int
  mask: str = "assistant"
  overlong: str = "drop"
  reasoning: str = "train"
  system: str = "keep"
  preference: bool = False
  packing: bool = True  # preference pairs: both sides in one row


def run_chunk(job: Job, payloads: Sequence[Any]) -> list[Kept | Dropped]:
  """One outcome per payload: a Conversation, (input_ids, loss_mask) of a pre-tokenized record, a
  preference Pair, or a Dropped (passed through: a record that failed conversion)."""
  out: list[Any] = list(payloads)
  todo = [i for i, p in enumerate(payloads) if not isinstance(p, Dropped)]
  if job.preference:
    results = _pairs(job, [payloads[i] for i in todo])
  else:
    results = _chats(job, [payloads[i] for i in todo])
  for i, r in zip(todo, results):
    out[i] = r
  return out


def _chats(job: Job, payloads: list) -> list[Kept | Dropped]:
  convs = [i for i, p in enumerate(payloads) if not isinstance(p, tuple)]
  encoded: list[Any] = [None] * len(payloads)
  if convs:
    batch = chat.encode_batch([payloads[i] for i in convs], job.tokenizer, job.mask, reasoning=job.reasoning,
                              system=job.system)
    for i, res in zip(convs, batch):
      encoded[i] = res
  vocab = len(job.tokenizer)
  out = []
  for payload, res in zip(payloads, encoded):
    try:
      if isinstance(payload, tuple):
        res = chat.Encoded(*_pretokenized(*payload, vocab=vocab, mask=job.mask))
      if isinstance(res, chat.DropExample):
        raise res
      ids, loss_mask, truncated = packing.prepare_example(res.ids, res.loss_mask, seq_len=job.seq_len,
                                                          overlong=job.overlong)
    except (records.MalformedRecord, chat.DropExample) as e:
      out.append(dropped(e))
      continue
    out.append(Kept(((ids, loss_mask.astype(np.uint8)),), bool(truncated), tuple(res.not_rendered),
                    bool(res.reasoning), bool(res.tool_calls)))
  return out


def _pretokenized(ids: np.ndarray, loss_mask: np.ndarray, vocab: int, mask: str):
  """A pre-tokenized example checked against the tokenizer; mask "none" trains every token."""
  if ids.size == 0:
    raise chat.DropExample("empty", "no input_ids")
  bad = (ids < 0) | (ids >= vocab)
  if bad.any():
    raise records.MalformedRecord("token_out_of_range",
                                  f"token id {int(ids[bad][0])} is outside the tokenizer's {vocab} ids")
  return ids, (np.ones_like(loss_mask) if mask == "none" else loss_mask)


def _pairs(job: Job, pairs: list) -> list[Kept | Dropped]:
  from jaxtune.data import preference as pref
  out = []
  for res in pref.encode_pairs(pairs, job.tokenizer) if pairs else []:
    try:
      if isinstance(res, chat.DropExample):
        raise res
      c_ids, c_mask, r_ids, r_mask, truncated = pref.fit_pair(*res, seq_len=job.seq_len, packed=job.packing,
                                                               overlong=job.overlong)
      sides = []
      for ids, mask in ((c_ids, c_mask), (r_ids, r_mask)):
        ids, mask, _ = packing.prepare_example(ids, mask, seq_len=job.seq_len, overlong="drop")
        sides.append((ids, mask.astype(np.uint8)))
    except (records.MalformedRecord, chat.DropExample) as e:
      out.append(dropped(e))
      continue
    out.append(Kept(tuple(sides), bool(truncated)))
  return out


def cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def auto_workers() -> int:
  return min(cpu_count(), AUTO_MAX_WORKERS)


_WORK: tuple = ()  # a worker's (fn, job), set once by _init


def _init(fn, job: Job) -> None:
  global _WORK
  os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism; no thread pool in each
  _WORK = (fn, job)


def _work(payloads: Sequence[Any]) -> list[Kept | Dropped]:
  fn, job = _WORK
  return fn(job, payloads)


class Pool:
  """Runs chunks through `fn` (`run_chunk`; a module-level function, which workers import) and returns their
  outcomes in submission order.

  `workers`: 1 runs every chunk in this process as it is submitted; n > 1 runs them in n
  spawned processes (at most IN_FLIGHT_PER_WORKER chunks each queued); 0 (auto) runs the first
  AUTO_AFTER_RECORDS records here, then starts `auto_workers()` processes if there is more
  than one core. Use as a context manager; `submit` and `drain` return the chunks finished so far,
  oldest first, as (tag, outcomes): `tag` is what the chunk was submitted with.
  """

  def __init__(self, job: Job, workers: int = 1, fn=None):
    if workers < 0:
      raise ValueError(f"workers must be >= 0, got {workers}")
    self.job, self.workers, self.fn = job, workers, fn or run_chunk
    self.submitted = 0  # records
    self._executor: concurrent.futures.ProcessPoolExecutor | None = None
    self._pending: collections.deque = collections.deque()
    self._size = 0

  def _processes(self) -> int:
    """Worker processes to use from now on (0: this process)."""
    if self.workers == 1:
      return 0
    if self.workers > 1:
      return self.workers
    n = auto_workers()
    return n if n > 1 and self.submitted >= AUTO_AFTER_RECORDS else 0

  def submit(self, payloads: Sequence[Any], tag: Any = None) -> list[tuple[Any, list[Kept | Dropped]]]:
    if not payloads:
      return []
    n = self._processes() if self._executor is None else self._size
    self.submitted += len(payloads)
    if n == 0:
      return [(tag, self.fn(self.job, payloads))]
    if self._executor is None:
      self._size = n
      self._executor = concurrent.futures.ProcessPoolExecutor(
          max_workers=n, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(self.fn, self.job))
    self._pending.append((tag, self._executor.submit(_work, list(payloads))))
    done = []
    while len(self._pending) > IN_FLIGHT_PER_WORKER * self._size:
      done.append(self._result())
    return done

  def drain(self) -> list[tuple[Any, list[Kept | Dropped]]]:
    """Every chunk still running, in order."""
    done = []
    while self._pending:
      done.append(self._result())
    return done

  def _result(self) -> tuple[Any, list[Kept | Dropped]]:
    tag, future = self._pending.popleft()
    return tag, future.result()

  @property
  def processes(self) -> int:
    """Worker processes started so far (0: everything ran in this process)."""
    return self._size

  def close(self) -> None:
    if self._executor is not None:
      for _, f in self._pending:
        f.cancel()
      self._pending.clear()
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None

  def __enter__(self) -> "Pool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
