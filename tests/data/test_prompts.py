"""Prompts read from any data-source form: references, bad records (file:line), strict mode."""

import json
import logging

import pytest

from jaxtune.data.prompts import read_prompts
from jaxtune.errors import DataError

USER = {"role": "user", "content": "Join apple and river."}


def _write_jsonl(path, rows):
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_prompt_forms(tmp_path, caplog):
  path = _write_jsonl(tmp_path / "p.jsonl", [
      {"messages": [USER]},  # no reference
      {"messages": [USER, {"role": "assistant", "content": "apple river"}]},  # trailing turn = reference
      {"messages": [USER, {"role": "assistant", "content": "x"}], "reference": "apple river"},  # explicit wins
      {"prompt": "Say hi.", "reference": "hi", "system": "Be brief."},
      {"instruction": "Add 2 and 3.", "output": "5"},  # alpaca: output = reference
      "{not json",
      {"messages": [{"role": "assistant", "content": "nothing to reply to"}]},
  ])
  with caplog.at_level(logging.WARNING):
    prompts = read_prompts(path)
  assert [p.reference for p in prompts] == [None, "apple river", "apple river", "hi", "5"]
  assert all(p.messages[-1]["role"] == "user" for p in prompts)
  assert prompts[3].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
  assert prompts[1].where == f"{path}:2"
  assert "skipped 2 malformed" in caplog.text and f"{path}:6" in caplog.text
  with pytest.raises(DataError, match=f"{path}:6"):
    read_prompts(path, strict=True)


def test_no_usable_prompt_is_an_error(tmp_path):
  path = _write_jsonl(tmp_path / "p.jsonl", [{"messages": []}])
  with pytest.raises(DataError, match="no usable prompt"):
    read_prompts(path)


def test_every_training_form_is_a_prompt(tmp_path):
  """sharegpt, prompt_completion and alpaca records (with or without their answer) are prompts too."""
  path = _write_jsonl(tmp_path / "p.jsonl", [
      {"conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi."}]},
      {"prompt": "Compute 12 + 30.", "completion": "42"},
      {"instruction": "Sort.", "input": "3 1 2"},  # alpaca without output: a prompt, no reference
      {"instruction": "Sort.", "input": "3 1 2", "system": "Be brief.", "reference": "1 2 3"},
  ])
  prompts = read_prompts(path)
  assert [p.reference for p in prompts] == ["Hi.", "42", None, "1 2 3"]
  assert prompts[0].messages == [{"role": "user", "content": "Hello!"}]
  assert prompts[2].messages == [{"role": "user", "content": "Sort.\n\n3 1 2"}]
  assert prompts[3].messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort.\n\n3 1 2"}]
