"""`--verify python:tests.helpers.synth_checks:FN` functions for the synth tests."""

import os
import signal


def even_length(messages, completion, reference):
  return len(completion) % 2 == 0


def first_char_even(messages, completion, reference):
  """Passes about half of random completions, deterministically."""
  return ord(completion[0]) % 2 == 0


def kill_at_reference(messages, completion, reference):
  """Passes every sample; SIGKILLs its own process on the first sample of the prompt whose reference is
  $SYNTH_KILL_AT (when set): a job killed mid-file, deterministically."""
  if reference is not None and reference == os.environ.get("SYNTH_KILL_AT"):
    os.kill(os.getpid(), signal.SIGKILL)
  return True
