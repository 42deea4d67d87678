"""Instruction data: raw records -> chat tokens + loss mask -> packed batches.

  records.py   files (.jsonl, .jsonl.gz, .json, .parquet) -> validated messages
  chat.py      messages -> (ids, loss_mask) by the tokenizer's chat template
  packing.py   pure packer: examples -> rows with segment ids and positions
  examples.py  sources -> one tokenized in-memory store + exact DataStats
  cache.py     optional on-disk cache of that store (data.cache_dir)
  pipeline.py  Grain wiring: shuffle, mix, pack, batch; checkpointable iterator
  report.py    `jaxtune data stats` / `jaxtune data inspect`
"""
