"""Data pipeline throughput: raw JSONL -> tokens + loss masks -> packed batches; tokenizing with several worker
processes and split across several jax.distributed processes.

  python bench/data_pipeline.py [--records 20000] [--seq-len 2048] [--batch 8] [--tokenizer DIR]
                                [--stages pipeline,workers,processes] [--workers 1,2] [--processes 2]

Stages (each prints RESULT lines, bench/results.py):
  pipeline   build_pipeline end to end: tokens/s of read + render + tokenize + mask, and as a reference
             measured in the same run the plain tokenizer on the same rendered texts (what masking costs on
             top of it); packed batches/s.
  workers    load_examples with each `--workers` count (data.tokenize_workers), worker start-up included;
             checks every count gives the identical store.
  processes  tokenizing as 1 process and as `--processes` jax.distributed processes on 127.0.0.1 (each its
             own child of this script, one CPU device, one tokenize worker): the wall time until every
             process holds the whole store (its share tokenized, the shares exchanged and merged); checks
             the stores are identical.
Without --tokenizer a tiny byte-level BPE (tests/helpers) is built locally. Every RESULT line carries the
1-minute load average when it was printed (`load1`): on a shared machine the wall-clock figures move with it;
`cpu_s` (user + sys of every process involved) and `tokens_per_cpu_s` show what the parallel paths cost in
CPU whatever the load, and `critical_cpu_s` (the CPU time of the busiest process: the main one or a worker's
share, or the slowest of the jax processes) is about the wall time on free cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from results import parse_result  # noqa: E402

WORDS = ("the model reads a question and writes an answer with some numbers like 42 and 7 "
         "then it explains each step in plain words so that a reader can follow along").split()


def synth(path: str, n: int, seed: int = 0) -> None:
  """n multi-turn conversations of varied length, with a system prompt on some."""
  rng = np.random.default_rng(seed)
  say = lambda k: " ".join(rng.choice(WORDS, size=k))  # noqa: E731
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      msgs = [{"role": "system", "content": "You are concise."}] if i % 4 == 0 else []
      for _ in range(int(rng.integers(1, 4))):
        msgs += [{"role": "user", "content": say(int(rng.integers(5, 60)))},
                 {"role": "assistant", "content": say(int(rng.integers(10, 200)))}]
      f.write(json.dumps({"messages": msgs}) + "\n")


def load1() -> str:
  return f"{os.getloadavg()[0]:.2f}"


def cpu_s(who=resource.RUSAGE_SELF) -> float:
  """CPU seconds (user + sys) of this process, or of its children that have ended (pool workers, once shut
  down)."""
  r = resource.getrusage(who)
  return r.ru_utime + r.ru_stime


def digest(store) -> str:
  h = hashlib.sha256()
  for a in (store.tokens, store.mask, store.offsets, np.asarray(store.source_bounds)):
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def data_cfg(data: str, seq_len: int, **kw):
  from jaxtune.config import DataCfg, SourceCfg
  return DataCfg(train=(SourceCfg(path=data),), seq_len=seq_len, **kw)


def stage_pipeline(tok, data: str, a) -> None:
  from jaxtune.data.pipeline import build_pipeline
  t0 = time.perf_counter()
  pipe = build_pipeline(data_cfg(data, a.seq_len, tokenize_workers=1), tok, batch_size=a.batch, seed=0)
  t_load = time.perf_counter() - t0
  s = pipe.stats
  print(f"read+tokenize+mask: {t_load:.2f} s, {s.records / t_load:,.0f} records/s, "
        f"{s.tokens / t_load:,.0f} tokens/s ({s.examples} examples, {s.tokens:,} tokens, "
        f"{s.loss_tokens:,} trained, dropped {s.dropped_by_reason})")

  convs = [json.loads(line)["messages"] for line in open(data, encoding="utf-8")]
  t0 = time.perf_counter()
  texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
  t_render = time.perf_counter() - t0
  t0 = time.perf_counter()
  n_tok = sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])
  t_tok = time.perf_counter() - t0
  print(f"reference: render once {t_render:.2f} s + plain tokenizer {t_tok:.2f} s = "
        f"{n_tok / (t_render + t_tok):,.0f} tokens/s (no mask)")

  it = pipe.iterator()
  next(it)
  t0, real = time.perf_counter(), 0
  for _ in range(a.steps):
    real += int((next(it)["segment_ids"] > 0).sum())
  t_it = time.perf_counter() - t0
  print(f"packed batches: {a.steps / t_it:,.0f} batches/s, {real / t_it:,.0f} real tokens/s, "
        f"packing efficiency {s.packing_efficiency:.3f} (window {pipe.window} examples)")
  print(f"RESULT pipeline tokens_per_s={s.tokens / t_load:.0f} records_per_s={s.records / t_load:.1f} "
        f"reference_tokens_per_s={n_tok / (t_render + t_tok):.0f} batches_per_s={a.steps / t_it:.1f} "
        f"packing_efficiency={s.packing_efficiency:.4f} load1={load1()}", flush=True)


def stage_workers(tok, data: str, a) -> None:
  from jaxtune.config import SourceCfg
  from jaxtune.data.examples import load_examples
  digests = {}
  for w in a.workers:
    t0, main0, kids0 = time.perf_counter(), cpu_s(), cpu_s(resource.RUSAGE_CHILDREN)
    store, stats = load_examples([SourceCfg(path=data)], tok, seq_len=a.seq_len, workers=w)
    dt, main, kids = time.perf_counter() - t0, cpu_s() - main0, cpu_s(resource.RUSAGE_CHILDREN) - kids0
    digests[w] = digest(store)
    # on free cores the wall time is about the busiest process's CPU time: the main process (reading, applying)
    # or a worker (its share of the chunks, start-up included)
    critical = max(main, kids / w) if w > 1 else main + kids
    print(f"RESULT tokenize_workers_{w} tokens_per_s={stats.tokens / dt:.0f} records_per_s={stats.records / dt:.1f} "
          f"seconds={dt:.2f} cpu_s={main + kids:.2f} main_cpu_s={main:.2f} critical_cpu_s={critical:.2f} "
          f"tokens_per_cpu_s={stats.tokens / (main + kids):.0f} tokens={stats.tokens} "
          f"identical={int(digests[w] == digests[a.workers[0]])} load1={load1()}", flush=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def stage_processes(tok_dir: str, data: str, a) -> None:
  digests = {}
  for count in sorted({1, a.processes}):
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = lambda i: [sys.executable, os.path.abspath(__file__), "--child", str(i), "--child-count", str(count),  # noqa: E731
                     "--port", str(port), "--data", data, "--tokenizer", tok_dir, "--seq-len", str(a.seq_len)]
    procs = [subprocess.Popen(cmd(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(count)]
    outs = [p.communicate(timeout=3600)[0] for p in procs]
    if any(p.returncode for p in procs):
      raise SystemExit("\n".join(outs))
    children = [dict(r[1]) for o in outs for r in map(parse_result, o.splitlines()) if r and r[0] == "child"]
    digests[count] = {c["digest"] for c in children}
    wall = max(c["seconds"] for c in children)
    cpu = sum(c["cpu_s"] for c in children)
    tokens = children[0]["tokens"]
    print(f"RESULT processes_{count} seconds={wall:.2f} tokens_per_s={tokens / wall:.0f} cpu_s={cpu:.2f} "
          f"critical_cpu_s={max(c['cpu_s'] for c in children):.2f} tokens_per_cpu_s={tokens / cpu:.0f} "
          f"tokens={tokens:.0f} "
          f"identical={int(len(digests[count]) == 1 and digests[count] == digests[1])} load1={load1()}", flush=True)


def child(a) -> None:
  """One process of the `processes` stage: the store of every record, this process tokenizing its share."""
  import jax
  if a.child_count > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{a.port}", num_processes=a.child_count,
                               process_id=a.child)
  from jaxtune.data import chat, pipeline
  tok = chat.load_tokenizer(a.tokenizer)
  cfg = data_cfg(a.data, a.seq_len, tokenize_workers=1)
  if a.child_count > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("bench-start")  # both start the clock together (the backends are up)
  t0, c0 = time.perf_counter(), cpu_s()
  store, stats = pipeline._examples(cfg, cfg.train, tok, 0, 1)
  dt, cpu = time.perf_counter() - t0, cpu_s() - c0
  d = int(digest(store), 16) % (1 << 52)  # RESULT values are numbers
  print(f"RESULT child seconds={dt:.3f} cpu_s={cpu:.3f} tokens={stats.tokens} digest={d}", flush=True)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--records", type=int, default=20000)
  p.add_argument("--seq-len", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--tokenizer", default="")
  p.add_argument("--stages", default="pipeline,workers,processes")
  p.add_argument("--workers", default="1,2", help="data.tokenize_workers counts to time")
  p.add_argument("--processes", type=int, default=2)
  p.add_argument("--child", type=int, default=-1, help=argparse.SUPPRESS)
  p.add_argument("--child-count", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--data", default="", help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child >= 0:
    return child(a)
  a.workers = [int(w) for w in a.workers.split(",")]
  from jaxtune.data import chat
  tmp = tempfile.mkdtemp()
  tok_dir = a.tokenizer
  if not tok_dir:
    from tests.helpers.tokenizers import make_tokenizer
    tok_dir = make_tokenizer(tmp, "llama3", vocab=512)[0]
  tok = chat.load_tokenizer(tok_dir)
  data = os.path.join(tmp, "chat.jsonl")
  synth(data, a.records)
  print(f"{a.records} records, {os.path.getsize(data) / 2**20:.1f} MiB JSONL, seq_len {a.seq_len}, batch {a.batch}; "
        f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
  stages = a.stages.split(",")
  if "pipeline" in stages:
    stage_pipeline(tok, data, a)
  if "workers" in stages:
    stage_workers(tok, data, a)
  if "processes" in stages:
    stage_processes(tok_dir, data, a)


if __name__ == "__main__":
  main()
