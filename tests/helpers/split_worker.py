"""One process of a `jax.distributed` run that builds a data pipeline and writes down what it saw.

  python -m tests.helpers.split_worker OUT_DIR TOKENIZER_DIR CACHE_DIR PROCESS_ID PROCESSES PORT DATA [DATA ...]

Writes OUT_DIR/process-<id>.npz: the first BATCHES train batches, the conversations this process ran through
the chat template (their first user message, in order) and the pipeline's stats (JSON).
"""

import json
import os
import sys

import numpy as np

BATCHES = 3
BATCH_SIZE = 4
SEQ_LEN = 256


def main(out_dir: str, tok_dir: str, cache_dir: str, process_id: int, processes: int, port: int, *data: str):
  import jax
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=processes,
                             process_id=process_id)
  from jaxtune.config import DataCfg, SourceCfg
  from jaxtune.data import chat
  from jaxtune.data.pipeline import build_pipeline

  tokenized = []
  encode_batch = chat.encode_batch

  def counting(conversations, *a, **k):
    for c in conversations:
      msgs = c.messages if hasattr(c, "messages") else c
      tokenized.append(next(m["content"] for m in msgs if m["role"] == "user"))
    return encode_batch(conversations, *a, **k)
  chat.encode_batch = counting

  cfg = DataCfg(train=tuple(SourceCfg(path=d) for d in data), seq_len=SEQ_LEN, cache_dir=cache_dir,
                tokenize_workers=1)
  pipe = build_pipeline(cfg, chat.load_tokenizer(tok_dir), batch_size=BATCH_SIZE, seed=0)
  it = pipe.iterator()
  batches = [next(it) for _ in range(BATCHES)]
  arrays = {f"b{i}_{k}": v for i, b in enumerate(batches) for k, v in b.items()}
  np.savez(os.path.join(out_dir, f"process-{process_id}.npz"), tokenized=np.asarray(json.dumps(tokenized)),
           stats=np.asarray(json.dumps(pipe.stats.to_dict())), **arrays)


if __name__ == "__main__":
  a = sys.argv[1:]
  main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), *a[6:])
