"""Which generated samples `jaxtune synth` keeps: a check per sample (`--verify`), then a choice per prompt
(`--keep`). Pure functions of text: no jax, no files.

  --verify exact               the completion equals the prompt's `reference` after whitespace normalisation
                               (runs of whitespace become one space, ends stripped)
  --verify regex:PATTERN       the first capture group of the first match of PATTERN in the completion
                               (`re.search`) equals the reference, both normalised as above
  --verify python:MOD:FN       FN(prompt_messages, completion, reference) -> bool, imported from module MOD
                               (a dotted name importable from the working directory, or a path to a .py file)
  (none)                       every sample passes

A sample with an empty completion never passes, nor (for exact and regex) one whose prompt has no reference.

  --keep all                   every passing sample
  --keep one-per-prompt        per prompt, the passing sample with the lowest index, of all --n decoded
  --keep first                 the same records, but a prompt's sampling stops at its first passing sample
                               (samples are decoded in rounds of one per open prompt), which decodes fewer
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from typing import Callable, Sequence

from jaxtune.errors import UsageError

KEEP = ("all", "first", "one-per-prompt")

Check = Callable[[list[dict], str, "str | None"], bool]


def normalise(text: str) -> str:
  """Runs of whitespace as one space, ends stripped."""
  return " ".join(text.split())


def _exact(messages: list[dict], completion: str, reference: str | None) -> bool:
  return reference is not None and normalise(completion) == normalise(reference)


def _regex(pattern: re.Pattern) -> Check:

  def check(messages: list[dict], completion: str, reference: str | None) -> bool:
    if reference is None:
      return False
    m = pattern.search(completion)
    return m is not None and m.group(1) is not None and normalise(m.group(1)) == normalise(reference)

  return check


def _import_function(spec: str, module_name: str, fn_name: str) -> Callable:
  if module_name.endswith(".py"):
    if not os.path.isfile(module_name):
      raise UsageError(f"--verify {spec}: no file {module_name!r}")
    mod_spec = importlib.util.spec_from_file_location(f"jaxtune_verify_{abs(hash(module_name))}", module_name)
    module = importlib.util.module_from_spec(mod_spec)
    try:
      mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed to load
      raise UsageError(f"--verify {spec}: loading {module_name} raised {type(e).__name__}: {e}") from None
  else:
    if os.getcwd() not in sys.path and "" not in sys.path:
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise UsageError(f"--verify {spec}: cannot import module {module_name!r} ({e})") from None
  fn = getattr(module, fn_name, None)
  if not callable(fn):
    raise UsageError(f"--verify {spec}: module {module_name!r} has no function {fn_name!r}")
  return fn


def _python(spec: str, fn: Callable) -> Check:

  def check(messages: list[dict], completion: str, reference: str | None) -> bool:
    try:
      ok = fn(messages, completion, reference)
    except Exception as e:  # noqa: BLE001 - the user's function failed: say which and on what
      prompt = str(messages[-1].get("content", ""))[:80] if messages else ""
      raise UsageError(f"--verify {spec} raised {type(e).__name__}: {e} (on a reply to {prompt!r})") from None
    if type(ok).__name__ not in ("bool", "bool_"):
      raise UsageError(f"--verify {spec} must return True or False, got {ok!r}")
    return bool(ok)

  return check


def parse_verify(spec: str | None) -> Check | None:
  """The check of a --verify spec (None: no verification); a bad spec is a UsageError naming it."""
  if not spec:
    return None
  kind, _, rest = spec.partition(":")
  if kind == "exact" and not rest:
    return _exact
  if kind == "regex" and rest:
    try:
      pattern = re.compile(rest)
    except re.error as e:
      raise UsageError(f"--verify {spec}: not a valid regular expression ({e})") from None
    if pattern.groups < 1:
      raise UsageError(f"--verify {spec}: the pattern needs a capture group, e.g. regex:'answer: (\\S+)'")
    return _regex(pattern)
  if kind == "python":
    module_name, _, fn_name = rest.rpartition(":")
    if module_name and fn_name:
      return _python(spec, _import_function(spec, module_name, fn_name))
  raise UsageError(f"--verify {spec!r}: expected exact, regex:PATTERN or python:MODULE:FUNCTION")


def needs_reference(spec: str | None) -> bool:
  """Whether a --verify spec compares with the prompt's reference (exact, regex)."""
  return bool(spec) and spec.partition(":")[0] in ("exact", "regex")


def passes(check: Check | None, messages: list[dict], completion: str, reference: str | None) -> bool:
  """Whether one sample passes: a non-empty completion that `check` accepts (every one without a check)."""
  if not completion.strip():
    return False
  return True if check is None else check(messages, completion, reference)


def kept(passed: Sequence[bool], keep: str) -> list[int]:
  """The indices of the samples of one prompt to keep, given which passed (in sample order)."""
  if keep not in KEEP:
    raise UsageError(f"--keep {keep!r}: expected one of {', '.join(KEEP)}")
  idx = [i for i, ok in enumerate(passed) if ok]
  return idx if keep == "all" else idx[:1]
