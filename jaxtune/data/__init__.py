"""Instruction data: raw records -> chat tokens + loss mask -> packed batches.

  records.py       sources (local/remote files, dirs, globs) -> validated messages
  pretokenized.py  ArrayRecord files of pre-tokenized examples: schema, reader, write_pretokenized
  hf_datasets.py   Hugging Face datasets: save_to_disk dirs and hub ids (optional `datasets`)
  chat.py          messages -> (ids, loss_mask) by the tokenizer's chat template; special
                   tokens a set template needs are added to the tokenizer
  packing.py       pure packer: examples -> rows with segment ids and positions
  examples.py      sources -> one tokenized in-memory store + exact DataStats; held-out split
  cache.py         optional on-disk cache of that store (data.cache_dir)
  pipeline.py      Grain wiring: shuffle, mix, pack, batch; checkpointable iterator
  report.py        `jaxtune data stats` / `jaxtune data inspect`
"""
