"""Shared fixtures: tiny local tokenizers and record-file writers."""

import gzip
import json
import os

import pytest

from jaxtune.data import chat
from tests.helpers.tokenizers import make_tokenizer


@pytest.fixture(scope="session")
def tok_dirs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("tok")
  return {name: make_tokenizer(str(tmp), name)[0] for name in ("llama3", "chatml")}


@pytest.fixture(scope="session")
def llama3_tok(tok_dirs):
  return chat.load_tokenizer(tok_dirs["llama3"])


@pytest.fixture(scope="session")
def chatml_tok(tok_dirs):
  return chat.load_tokenizer(tok_dirs["chatml"])


def write_jsonl(path, rows, gz=False):
  """Writes rows (dicts as JSON, strings verbatim) one per line."""
  lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
  with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


def conv(i, turns=1, system=None):
  """A deterministic conversation of `turns` user/assistant exchanges."""
  msgs = [{"role": "system", "content": system}] if system else []
  for t in range(turns):
    msgs.append({"role": "user", "content": f"Question {i}.{t}: what is {i} + {t}?"})
    msgs.append({"role": "assistant", "content": f"The answer is {i + t}."})
  return {"messages": msgs}


TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
# Family template -> the tiny tokenizer's base special-token set; the template's own markers are added
# by chat.load_tokenizer, as for a base model tuned with an official template.
FAMILIES = {"llama31": "llama3", "qwen25": "chatml", "qwen3": "chatml", "gemma2": "gemma", "gemma3": "gemma",
            "mistral_v03": "mistral", "deepseek_r1": "deepseek"}


@pytest.fixture(scope="session")
def family_tok(tmp_path_factory):
  """family_tok(name): a tiny tokenizer loaded with tests/data/templates/<name>.jinja (built once)."""
  made = {}

  def get(name):
    if name not in made:
      path, _ = make_tokenizer(str(tmp_path_factory.mktemp(name)), FAMILIES[name])
      made[name] = chat.load_tokenizer(path, os.path.join(TEMPLATES, f"{name}.jinja"))
    return made[name]
  return get
