"""Data pipeline throughput: raw JSONL -> tokens + loss masks -> packed batches.

  python bench/data_pipeline.py [--records 20000] [--seq-len 2048] [--batch 8] [--tokenizer DIR]

Prints tokens/s of each stage, and as a reference measured in the same run the
plain tokenizer on the same rendered texts (what masking costs on top of it).
Without --tokenizer a tiny byte-level BPE (tests/helpers) is built locally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxtune.config import DataCfg, SourceCfg  # noqa: E402
from jaxtune.data import chat  # noqa: E402
from jaxtune.data.pipeline import build_pipeline  # noqa: E402

WORDS = ("the model reads a question and writes an answer with some numbers like 42 and 7 "
         "then it explains each step in plain words so that a reader can follow along").split()


def synth(path: str, n: int, seed: int = 0) -> None:
  """n multi-turn conversations of varied length, with a system prompt on some."""
  rng = np.random.default_rng(seed)
  say = lambda k: " ".join(rng.choice(WORDS, size=k))
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      msgs = [{"role": "system", "content": "You are concise."}] if i % 4 == 0 else []
      for _ in range(int(rng.integers(1, 4))):
        msgs += [{"role": "user", "content": say(int(rng.integers(5, 60)))},
                 {"role": "assistant", "content": say(int(rng.integers(10, 200)))}]
      f.write(json.dumps({"messages": msgs}) + "\n")


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--records", type=int, default=20000)
  p.add_argument("--seq-len", type=int, default=2048)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--tokenizer", default="")
  a = p.parse_args()
  tmp = tempfile.mkdtemp()
  if a.tokenizer:
    tok = chat.load_tokenizer(a.tokenizer)
  else:
    from tests.helpers.tokenizers import make_tokenizer
    tok = chat.load_tokenizer(make_tokenizer(tmp, "llama3", vocab=512)[0])
  data = os.path.join(tmp, "chat.jsonl")
  synth(data, a.records)
  print(f"{a.records} records, {os.path.getsize(data) / 2**20:.1f} MiB JSONL, seq_len {a.seq_len}, batch {a.batch}")

  t0 = time.perf_counter()
  pipe = build_pipeline(DataCfg(train=(SourceCfg(path=data),), seq_len=a.seq_len), tok,
                        batch_size=a.batch, seed=0)
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


if __name__ == "__main__":
  main()
