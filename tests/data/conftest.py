"""Shared fixtures: tiny local tokenizers and record-file writers."""

import gzip
import json

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
