"""`--verify` and `--keep` on hand-made samples: each mode keeps exactly the samples it should."""

import pytest

from jaxtune.errors import UsageError
from jaxtune.synth.verify import kept, needs_reference, parse_verify, passes

Q = [{"role": "user", "content": "What is the capital of France?"}]


def _passed(spec, completions, reference):
  check = parse_verify(spec)
  return [passes(check, Q, c, reference) for c in completions]


def test_exact_normalises_whitespace_only():
  completions = ["Paris", "  Paris\n", "paris", "The capital is Paris", "Paris.", "New  York", "New\nYork ", ""]
  assert _passed("exact", completions[:5], " Paris ") == [True, True, False, False, False]
  assert _passed("exact", completions[5:], "New York") == [True, True, False]
  assert _passed("exact", ["Paris"], None) == [False]  # no reference: nothing passes


def test_regex_compares_the_first_capture_group():
  spec = r"regex:answer is (-?\d+)"
  completions = ["So the answer is 42.", "answer is 41", "no answer here", "answer is 42, not: answer is 7",
                 "answer is 7, then answer is 42", "The answer is  42"]
  assert _passed(spec, completions, "42") == [True, False, False, True, False, False]
  assert _passed(r"regex:answer:\s*(.*)$", ["answer:   New   York  "], "New York") == [True]  # normalised
  assert _passed(r"regex:(a)|(b)", ["b"], "b") == [False]  # group 1 did not take part in the match
  assert _passed(spec, ["answer is 42"], None) == [False]


def test_python_function_gets_prompt_completion_and_reference(tmp_path):
  f = tmp_path / "checks.py"
  f.write_text("def contains(messages, completion, reference):\n"
               "  assert messages[-1]['role'] == 'user'\n"
               "  return reference in completion and 'France' in messages[-1]['content']\n"
               "def not_a_bool(messages, completion, reference):\n  return 'yes'\n"
               "def boom(messages, completion, reference):\n  raise KeyError('x')\n")
  spec = f"python:{f}:contains"
  assert _passed(spec, ["It is Paris.", "It is Lyon.", "Paris", ""], "Paris") == [True, False, True, False]
  with pytest.raises(UsageError, match="must return True or False"):
    _passed(f"python:{f}:not_a_bool", ["x"], "x")
  with pytest.raises(UsageError, match="boom raised KeyError"):
    _passed(f"python:{f}:boom", ["x"], "x")
  # a dotted module name works too
  assert _passed("python:tests.helpers.synth_checks:even_length", ["ab", "abc"], None) == [True, False]


def test_no_verify_passes_every_non_empty_sample():
  assert _passed(None, ["a", " ", "", "b"], None) == [True, False, False, True]
  assert [needs_reference(s) for s in ("exact", "regex:(a)", "python:m:f", None)] == [True, True, False, False]


@pytest.mark.parametrize("keep, want", [("all", [1, 3, 4]), ("first", [1]), ("one-per-prompt", [1])])
def test_keep(keep, want):
  assert kept([False, True, False, True, True], keep) == want
  assert kept([False, False], keep) == []


@pytest.mark.parametrize("spec, msg", [
    ("regex:(", "not a valid regular expression"), (r"regex:\d+", "needs a capture group"),
    ("exactly", "expected exact, regex:PATTERN or python:MODULE:FUNCTION"), ("python:nomodule", "expected exact"),
    ("python:no_such_module_xyz:f", "cannot import module"), ("python:tests.helpers.synth_checks:nope", "no function"),
])
def test_bad_specs_are_usage_errors(spec, msg):
  with pytest.raises(UsageError, match=msg):
    parse_verify(spec)
