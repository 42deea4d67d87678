"""Record formats, file types and schema validation."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxtune.data import records
from jaxtune.data.records import MalformedRecord, to_messages
from tests.data.conftest import write_jsonl

U, A, S = "user", "assistant", "system"


def m(role, content):
  return {"role": role, "content": content}


def test_messages_format_multi_turn_system_and_tools():
  rec = {"messages": [m(S, "sys"), m(U, "q1"), {"role": A, "content": None, "tool_calls": [{"id": "1"}]},
                      {"role": "tool", "content": "42", "tool_call_id": "1"}, m(A, "a1"),
                      m(U, [{"type": "text", "text": "q"}, {"type": "text", "text": "2"}]), m(A, "a2")]}
  out = to_messages(rec, "messages")
  assert [x["role"] for x in out] == [S, U, A, "tool", A, U, A]
  assert out[2]["tool_calls"] == [{"id": "1"}] and out[2]["content"] is None
  assert out[3]["tool_call_id"] == "1" and out[5]["content"] == "q2"
  assert to_messages({"system": "s", "messages": [m(U, "q"), m(A, "a")]}, "messages")[0] == m(S, "s")


def test_sharegpt_format():
  rec = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                           {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"},
                           {"from": "gpt", "value": "a2"}]}
  assert to_messages(rec, "sharegpt") == [m(S, "s"), m(U, "q"), m(A, "a"), m(U, "q2"), m(A, "a2")]


def test_alpaca_format():
  assert to_messages({"instruction": "Do it", "input": "", "output": "done"}, "alpaca") == [m(U, "Do it"), m(A, "done")]
  assert to_messages({"instruction": "Sum", "input": "1 2", "output": "3", "system": "s"}, "alpaca") == [
      m(S, "s"), m(U, "Sum\n\n1 2"), m(A, "3")]


def test_prompt_completion_format():
  assert to_messages({"prompt": "p", "completion": "c"}, "prompt_completion") == [m(U, "p"), m(A, "c")]
  assert to_messages({"prompt": [m(U, "p")], "completion": [m(A, "c")]}, "prompt_completion") == [m(U, "p"), m(A, "c")]


@pytest.mark.parametrize("rec,fmt", [
    ({"messages": [m(U, "q"), m(A, "a")]}, "messages"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt"),
    ({"instruction": "q", "output": "a"}, "alpaca"),
    ({"prompt": "q", "completion": "a"}, "prompt_completion"),
])
def test_auto_detects_each_format(rec, fmt):
  assert records.detect_format(rec) == fmt
  assert to_messages(rec, "auto") == [m(U, "q"), m(A, "a")]


@pytest.mark.parametrize("rec,fmt,reason", [
    ({"messages": [m(U, "q")]}, "messages", "no_assistant"),
    ({"messages": [m(U, "q"), {"role": A}]}, "messages", "missing_content"),
    ({"messages": [m(U, "q"), m(A, "  ")]}, "messages", "empty_content"),
    ({"messages": [m("wizard", "q"), m(A, "a")]}, "messages", "unknown_role"),
    ({"messages": "hi"}, "messages", "bad_schema"),
    ({"conversations": []}, "messages", "bad_schema"),
    ({"conversations": [{"from": "alien", "value": "q"}, {"from": "gpt", "value": "a"}]}, "sharegpt", "unknown_role"),
    ({"instruction": "q"}, "alpaca", "missing_content"),
    ({"prompt": "q", "completion": 3}, "prompt_completion", "bad_content"),
    ({"text": "x"}, "auto", "unknown_schema"),
    ([1, 2], "auto", "not_an_object"),
    (MalformedRecord("bad_json"), "messages", "bad_json"),
])
def test_malformed_records(rec, fmt, reason):
  with pytest.raises(MalformedRecord) as e:
    to_messages(rec, fmt)
  assert e.value.reason == reason


RECS = [{"messages": [m(U, f"q{i}"), m(A, f"a{i}")]} for i in range(5)]


def _write(kind, tmp_path):
  if kind == "jsonl":
    return write_jsonl(tmp_path / "d.jsonl", RECS)
  if kind == "jsonl.gz":
    return write_jsonl(tmp_path / "d.jsonl.gz", RECS, gz=True)
  if kind == "json":
    (tmp_path / "d.json").write_text(json.dumps(RECS))
    return str(tmp_path / "d.json")
  pq.write_table(pa.Table.from_pylist(RECS), tmp_path / "d.parquet")
  return str(tmp_path / "d.parquet")


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "parquet"])
def test_readers(kind, tmp_path):
  path = _write(kind, tmp_path)
  got = list(records.read_records(path))
  assert [to_messages(r, "auto") for _, _, r in got] == [r["messages"] for r in RECS]
  first = 1 if kind.startswith("jsonl") else 0  # lines are 1-based, list/row indices 0-based
  assert [n for _, n, _ in got] == list(range(first, first + 5))
  assert records.expand(str(tmp_path)) == [path]


def test_bad_json_line_is_yielded_not_raised(tmp_path):
  path = write_jsonl(tmp_path / "d.jsonl", [RECS[0], "{oops", RECS[1]])
  got = list(records.read_records(path))
  assert [n for _, n, _ in got] == [1, 2, 3] and isinstance(got[1][2], MalformedRecord)
  assert records.where(path, 2) == f"{path}:2"


def test_json_must_be_a_list(tmp_path):
  (tmp_path / "d.json").write_text(json.dumps({"messages": []}))
  with pytest.raises(ValueError, match="list"):
    list(records.read_records(str(tmp_path / "d.json")))


def test_missing_files_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    records.expand(str(tmp_path / "nope.jsonl"))
  with pytest.raises(FileNotFoundError):
    records.expand(str(tmp_path / "*.jsonl"))


CALL = {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}


def test_tool_calling_records():
  tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
  rec = {"tools": tools, "messages": [m(U, "q"), {"role": A, "content": "", "tool_calls": [CALL]},
                                      {"role": "tool", "content": {"y": 2}}, m(A, "a")]}
  conv = records.to_conversation(rec, "auto")
  assert conv.tools == tools and conv.messages[1]["content"] == "" and conv.messages[1]["tool_calls"] == [CALL]
  assert conv.messages[2]["content"] == '{"y": 2}'  # a structured tool result becomes its JSON text
  assert records.to_conversation({**rec, "tools": json.dumps(tools)}, "auto").tools == tools
  only_call = {"messages": [m(U, "q"), {"role": A, "content": None, "tool_calls": [CALL]}]}
  assert records.to_conversation(only_call, "messages").messages[1]["content"] is None  # a reply: a call
  share = {"tools": json.dumps(tools), "conversations": [
      {"from": "human", "value": "q"}, {"from": "gpt", "value": "Let me see."},
      {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
      {"from": "observation", "value": "2"}, {"from": "function_call", "value": '[{"name": "f", "arguments": "{}"}]'},
      {"from": "observation", "value": "3"}, {"from": "gpt", "value": "a"}]}
  got = records.to_conversation(share, "auto")
  assert got.tools == tools
  assert got.messages[1] == {"role": A, "content": "Let me see.", "tool_calls": [CALL]}  # text and call: one turn
  assert got.messages[3] == {"role": A, "content": None,
                             "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}
  assert [x["role"] for x in got.messages] == [U, A, "tool", A, "tool", A]


def test_reasoning_field_aliases():
  for key in ("reasoning_content", "reasoning", "thinking"):
    out = to_messages({"messages": [m(U, "q"), {"role": A, "content": "a", key: "because"}]}, "messages")
    assert out[1] == {"role": A, "content": "a", "reasoning_content": "because"}


@pytest.mark.parametrize("rec,fmt,reason", [
    ({"messages": [m(U, "q"), m(A, "a")], "tools": "{not json"}, "messages", "bad_tools"),
    ({"messages": [m(U, "q"), m(A, "a")], "tools": {"name": "f"}}, "messages", "bad_tools"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{oops"}]},
     "sharegpt", "bad_tool_call"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"arguments": {}}'}]},
     "sharegpt", "bad_tool_call"),
    ({"messages": [m(U, "q"), {"role": A, "content": "a", "reasoning_content": 3}]}, "messages", "bad_content"),
    ({"messages": [m(U, "q"), {"role": A, "content": "", "tool_calls": []}]}, "messages", "empty_content"),
])
def test_malformed_tool_records(rec, fmt, reason):
  with pytest.raises(MalformedRecord) as e:
    to_messages(rec, fmt)
  assert e.value.reason == reason
