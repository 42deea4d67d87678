"""A chunk function for `jaxtune.data.tokenize.Pool` tests, in a module that worker processes import quickly."""

import time


def first_chunk_slowest(job, payloads):
  """Chunk 0 sleeps `job` seconds, so it finishes after the chunks submitted after it."""
  time.sleep(job if payloads[0] == 0 else 0.0)
  return [p * 10 for p in payloads]
