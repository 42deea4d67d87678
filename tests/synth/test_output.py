"""The files of a synth job: a restarted job finds what a killed one finished and cuts OUT back to it."""

import json

import pytest

from jaxtune import io
from jaxtune.errors import UsageError
from jaxtune.synth.output import JobFiles

SETTINGS = {"model": "m", "prompts": "p.jsonl", "n": 2, "seed": 0}


def _rec(i, s):
  return {"id": i, "sample": s, "messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}.{s}"}]}


def _row(i, kept, samples=2, passed=None):
  return {"id": i, "samples": samples, "passed": kept if passed is None else passed, "kept": kept, "new_tokens": 5,
          "truncated": 0, "empty": 0, "no_reference": 0}


def _job(out, settings=SETTINGS, **kw):
  files = JobFiles(str(out), settings)
  return files, files.start(**kw)


def _append(path, text):
  io.write_text(path, io.read_text(path) + text)  # (a GCS object cannot be appended to: rewritten)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_resume_cuts_a_killed_jobs_tail(where, tmp_path, gcs):
  out = str(tmp_path / "o.jsonl") if where == "local" else "gs://bucket/synth/o.jsonl"
  files, done = _job(out)
  assert done == 0
  files.write([_rec(0, 0), _rec(0, 1)], [_row(0, 2)])
  files.write([], [_row("b", 0)])  # a prompt with nothing kept is finished too
  files.write([_rec(2, 1)], [_row(2, 1, passed=2)])
  files.close()
  good_out, good_progress = io.read_bytes(out), io.read_bytes(out + ".progress")
  # killed after writing a chunk's records but before its progress rows, mid-way through a record and a row
  _append(out, json.dumps(_rec(3, 0)) + "\n" + json.dumps(_rec(3, 1))[:17])
  _append(out + ".progress", json.dumps(_row(3, 2))[:9])
  files, done = _job(out)
  assert done == 3 and list(files.done_ids()) == [0, "b", 2]
  assert io.read_bytes(out) == good_out and io.read_bytes(out + ".progress") == good_progress
  files.write([_rec(3, 0)], [_row(3, 1)])
  files.close()
  stats = files.summary({"malformed_records": 0})
  assert io.read_json(out + ".stats.json") == stats
  assert {k: stats[k] for k in ("prompts", "samples", "passed", "kept", "new_tokens")} == \
      {"prompts": 4, "samples": 8, "passed": 5, "kept": 4, "new_tokens": 20}
  assert stats["kept_per_prompt"] == {"0": 1, "1": 2, "2": 1} and stats["settings"] == SETTINGS
  assert [json.loads(line)["id"] for line in io.read_text(out).splitlines()] == [0, 0, 2, 3]


def test_other_settings_are_refused_and_overwrite_starts_again(tmp_path):
  out = tmp_path / "o.jsonl"
  files, _ = _job(out)
  files.write([_rec(0, 0)], [_row(0, 1)])
  files.close()
  with pytest.raises(UsageError, match=r"other settings \(seed: 0 then, 1 now\)"):
    _job(out, {**SETTINGS, "seed": 1})
  files, done = _job(out, {**SETTINGS, "seed": 1}, overwrite=True)
  assert done == 0 and out.read_text() == ""


def test_a_file_that_is_not_a_jobs_output_is_refused(tmp_path):
  out = tmp_path / "o.jsonl"
  out.write_text('{"messages": []}\n')
  with pytest.raises(UsageError, match="is not a synth job's output"):
    _job(out)
  files, _ = _job(tmp_path / "p.jsonl")
  files.write([_rec(0, 0)], [_row(0, 2)])  # progress accounts for 2 records, OUT holds 1
  files.close()
  with pytest.raises(UsageError, match="holds 1 records but"):
    _job(tmp_path / "p.jsonl")


def test_a_job_that_finished_nothing_starts_afresh_with_new_settings(tmp_path):
  out = tmp_path / "o.jsonl"
  files, _ = _job(out)  # started (settings written), then killed before its first chunk was finished
  files.close()
  files, done = _job(out, {**SETTINGS, "seed": 1})
  files.close()
  assert done == 0
  assert json.loads((tmp_path / "o.jsonl.progress").read_text().splitlines()[0]) == {"settings": {**SETTINGS,
                                                                                                   "seed": 1}}
