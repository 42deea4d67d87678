"""Issue 18, class 5: one bad record never kills a run: it is counted with its file:line and reason like any
malformed record (and fails the run in strict mode, naming file:line); a byte-order mark costs nothing; and
`jaxtune train` names the first dropped records."""

from __future__ import annotations

import json

import pytest

from tests.helpers.cli import ROOT, assert_error, assert_ok, chat_records, run_main

BAD_LINES = {  # reason -> a line (bytes) that is not a usable record
    "bad_utf8": b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
    "bad_json": b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's recursion limit
    "bad_unicode": b'{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "c"}]}',
    "not_an_object": b'"just a string"',
    "bad_content": b'{"messages": [{"role": "user", "content": {"nested": [1, 2]}}, {"role": "assistant", "content": "x"}]}',
}
HUGE_INT = b'{"messages": ' + b"1" * 5000 + b"}"  # past Python's int-digits limit: bad_json too
NUL = b'{"messages": [{"role": "user", "content": "a\\u0000b"}, {"role": "assistant", "content": "ok"}]}'  # fine


def _stats(tiny_run, path, *extra) -> dict:
  r = run_main("data", "stats", "--json", f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{path}", *extra)
  assert_ok(r)
  return json.loads(r.out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """A .jsonl that starts with a BOM, uses CRLF line ends, and holds each bad line among 30 good records:
  {reason: its line number}."""
  good = [line.encode() for line in chat_records(30)]
  lines, where = list(good[:10]), {}
  for reason, bad in [*BAD_LINES.items(), ("bad_json", HUGE_INT)]:
    lines.append(bad)
    where.setdefault(reason, []).append(len(lines))
  lines += [NUL] + good[10:]
  p = tmp_path_factory.mktemp("records") / "mixed.jsonl"
  p.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
  return p, where


def test_bad_records_are_counted_with_file_and_line(tiny_run, mixed):
  path, where = mixed
  s = _stats(tiny_run, path)
  n_bad = sum(len(v) for v in where.values())
  assert s["records"] == 31 + n_bad and s["examples"] == 31, s  # the BOM line and the NUL one are kept
  assert s["dropped_by_reason"] == {reason: len(lines) for reason, lines in where.items()}, s
  got = {(x["where"], x["reason"]) for x in s["samples"]}
  assert got == {(f"{path}:{n}", reason) for reason, lines in where.items() for n in lines}, got


@pytest.mark.parametrize("reason", BAD_LINES)
def test_strict_mode_names_the_bad_line(tiny_run, reason, tmp_path):
  p = tmp_path / "one.jsonl"
  good = [line.encode() for line in chat_records(4)]
  p.write_bytes(b"\n".join(good[:2] + [BAD_LINES[reason]] + good[2:]) + b"\n")
  r = run_main("data", "stats", f"--config={ROOT}/configs/tiny.py:{tiny_run.model_dir},{p}", "--config.data.strict=True")
  assert_error(r, f"{p}:3", "strict")


def test_json_list_sources(tiny_run, tmp_path):
  """A .json list: a BOM is fine, a lone surrogate is one bad record named by its index."""
  recs = [json.loads(line) for line in chat_records(6)]
  text = json.dumps(recs[:3])[:-1] + ', {"prompt": "a\\udc00", "completion": "b"}, ' + json.dumps(recs[3:])[1:]
  p = tmp_path / "list.json"
  p.write_bytes(b"\xef\xbb\xbf" + text.encode())
  s = _stats(tiny_run, p)
  assert s["records"] == 7 and s["examples"] == 6 and s["dropped_by_reason"] == {"bad_unicode": 1}, s
  assert s["samples"][0]["where"] == f"{p}[3]"


def test_generate_prompts_with_a_bad_line(tiny_run, tmp_path):
  p = tmp_path / "prompts.jsonl"
  p.write_bytes(b'{"prompt": "hi"}\n{"prompt": "caf\xe9"}\n')
  r = run_main("generate", "--model", str(tiny_run.model_dir), "--prompts", str(p), "--max-new-tokens", "2")
  assert_error(r, f"{p}:2", "bad_utf8")


def test_train_names_the_first_dropped_records(tiny_run):
  """The shared run's data has a line that is not JSON (6) and one without a reply (10)."""
  assert f"{tiny_run.data}:6: bad_json" in tiny_run.stderr, tiny_run.stderr
  assert f"{tiny_run.data}:10: no_assistant" in tiny_run.stderr, tiny_run.stderr
