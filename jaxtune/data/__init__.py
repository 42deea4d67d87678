"""Instruction data: raw records -> chat tokens + loss mask -> packed batches.

  records.py       sources (local/remote files, dirs, globs) -> validated messages
  pretokenized.py  ArrayRecord files of pre-tokenized examples: schema, reader, write_pretokenized
  hf_datasets.py   Hugging Face datasets: save_to_disk dirs and hub ids (optional `datasets`)
  messages.py      conversations as the template gets them: tools, tool calls, reasoning
                   (data.reasoning), system messages (data.system); messages a rendering lost
  tokenizer.py     load_tokenizer; the special tokens a set template writes are added to it
  rendering.py     the chat template call, its end-of-turn markers, what a template supports
  turns.py         where a turn with tool calls or reasoning lies in a rendered chat
  chat.py          messages -> (ids, loss_mask) by the tokenizer's chat template
  packing.py       pure packer: examples -> rows with segment ids and positions
  tokenize.py      chunks of records -> tokenized outcomes, in order, here or in worker processes
  examples.py      sources -> one tokenized in-memory store + exact DataStats; held-out split
  shares.py        tokenization split across the processes of a run, shares merged in record order
  cache.py         optional on-disk cache of that store (data.cache_dir, local or gs://)
  pipeline.py      Grain wiring: shuffle, mix, pack, batch; checkpointable iterator
  report.py        `jaxtune data stats` / `jaxtune data inspect`
"""
