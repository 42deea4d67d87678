"""The one family of errors that describe bad input.

Everything a user can fix (a config value, a data file, a model directory, a run
dir, a command-line argument) raises a `UserError`: the CLI prints it as a single
`error: ...` line and exits 1. Anything else that escapes is a bug in jaxtune,
printed with its traceback. Each subclass also derives from the builtin error a
caller would expect (`ValueError`, `FileNotFoundError`, ...), so code and tests
that catch those keep working.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input the user can fix; the message names the key, file, tensor or value, and what would work."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work, with the key that holds it."""


class DataError(UserError, ValueError):
  """The data cannot feed training; the message says why (and where: file:line)."""


class TemplateError(UserError, ValueError):
  """No usable chat template: the tokenizer has none and none was given, or the given one is unknown."""


class CheckpointError(UserError, ValueError):
  """A model directory or checkpoint that does not fit: names the file or tensor and the shapes."""


class TrainingError(UserError, RuntimeError):
  """A run that cannot go on (non-finite loss, a batch with nothing to train on, a changed config)."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist (or is not what it should be)."""


class UsageError(UserError, ValueError):
  """Command-line arguments that do not fit together."""
