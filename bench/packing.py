"""Packing efficiency: first fit in arrival order (the packer before) vs best fit decreasing (now).

  python bench/packing.py [--sft-records 6000] [--short-records 300] [--seed 0]

Two length mixes, written as JSONL chats and tokenized by the real pipeline (chat template, loss
masks, overlong examples dropped) with a tiny byte-level BPE built locally:

  sft_2048   a realistic SFT mix at seq 2048: 1-4 turns, user turns and replies of log-normal length
             (long-tailed: a few examples fill most of a row), a system prompt on a third of them
  short_256  a few hundred short single-turn examples at seq 256 (replies of 3-90 words)

For each, over the windows the pipeline really packs (its example stream, its window size, the first
epoch): the fraction of row slots holding tokens with first fit and with best fit decreasing, the
pipeline's own `packing_efficiency` stat, and the time to pack one window with each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxtune.config import DataCfg, SourceCfg  # noqa: E402
from jaxtune.data import chat, packing, pipeline  # noqa: E402

WORDS = ("the model reads a question and writes an answer with some numbers like 42 and 7 "
         "then it explains each step in plain words so that a reader can follow along").split()


def sft_mix(path: str, n: int, rng: np.random.Generator) -> None:
  say = lambda median, sigma: " ".join(rng.choice(WORDS, size=max(1, int(rng.lognormal(math.log(median), sigma)))))
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      msgs = [{"role": "system", "content": "You are a careful assistant."}] if i % 3 == 0 else []
      for _ in range(1 + min(3, int(rng.geometric(0.6)) - 1)):
        msgs += [{"role": "user", "content": say(30, 0.9)}, {"role": "assistant", "content": say(110, 0.9)}]
      f.write(json.dumps({"messages": msgs}) + "\n")


def short_mix(path: str, n: int, rng: np.random.Generator) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      reply = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 90))))
      f.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                       {"role": "assistant", "content": reply}]}) + "\n")


def measure(name: str, path: str, tok, seq_len: int, batch: int, seed: int) -> None:
  p = pipeline.build_pipeline(DataCfg(train=(SourceCfg(path=path),), seq_len=seq_len), tok,
                              batch_size=batch, seed=seed)
  lengths = p.store.lengths
  n_windows = max(1, math.ceil(len(lengths) / p.window))
  stream = pipeline._stream(p.store, [1.0], seed).batch(p.window)  # the ids the pipeline packs, window by window
  rows, secs = {"first_fit": 0, "best_fit_decreasing": 0}, {"first_fit": 0.0, "best_fit_decreasing": 0.0}
  tokens = 0
  for w in range(n_windows):
    win = lengths[np.asarray(stream[w])]
    tokens += int(win.sum())
    for fit_name, fit in (("first_fit", packing.first_fit), ("best_fit_decreasing", packing.best_fit_decreasing)):
      t0 = time.perf_counter()
      rows[fit_name] += len(fit(win, seq_len))
      secs[fit_name] += time.perf_counter() - t0
  eff = {k: tokens / (r * seq_len) for k, r in rows.items()}
  s = p.stats
  print(f"{name}: {s.examples} examples (dropped {s.dropped_by_reason}), tokens/example mean {lengths.mean():.0f} "
        f"median {np.median(lengths):.0f} p90 {np.percentile(lengths, 90):.0f} max {lengths.max()}, "
        f"seq {seq_len}, window {p.window} examples x {n_windows}")
  print(f"  first fit {eff['first_fit']:.4f} ({rows['first_fit']} rows), best fit decreasing "
        f"{eff['best_fit_decreasing']:.4f} ({rows['best_fit_decreasing']} rows); pipeline stat "
        f"{s.packing_efficiency:.4f}; ms per window: first fit {1e3 * secs['first_fit'] / n_windows:.2f}, "
        f"best fit {1e3 * secs['best_fit_decreasing'] / n_windows:.2f}")
  print(f"RESULT packing_{name} first_fit={eff['first_fit']:.4f} best_fit_decreasing={eff['best_fit_decreasing']:.4f} "
        f"pipeline_stat={s.packing_efficiency:.4f} examples={s.examples} mean_len={lengths.mean():.1f} "
        f"seq_len={seq_len} window={p.window} windows={n_windows} "
        f"ms_per_window_first_fit={1e3 * secs['first_fit'] / n_windows:.3f} "
        f"ms_per_window_best_fit={1e3 * secs['best_fit_decreasing'] / n_windows:.3f}")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--sft-records", type=int, default=6000)
  ap.add_argument("--short-records", type=int, default=300)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  from tests.helpers.tokenizers import make_tokenizer
  tmp = tempfile.mkdtemp()
  tok = chat.load_tokenizer(make_tokenizer(tmp, "llama3", vocab=512)[0])
  rng = np.random.default_rng(a.seed)
  sft_mix(os.path.join(tmp, "sft.jsonl"), a.sft_records, rng)
  short_mix(os.path.join(tmp, "short.jsonl"), a.short_records, rng)
  measure("sft_2048", os.path.join(tmp, "sft.jsonl"), tok, 2048, a.batch, a.seed)
  measure("short_256", os.path.join(tmp, "short.jsonl"), tok, 256, a.batch, a.seed)


if __name__ == "__main__":
  main()
