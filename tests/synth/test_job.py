"""`jaxtune synth` end to end on tiny models: greedy records equal transformers' greedy `generate` for every
family; the same seed gives the same samples on one device and on a (2, 2, 2) mesh of 8; each verify mode keeps
exactly the right samples; a job killed mid-file and restarted ends with the file of an uninterrupted one."""

import json
import os

import pytest

from jaxtune.synth import job as synth
from jaxtune.generate import load_model
from tests.helpers.hf_models import FAMILIES, make_tiny_chat_model
from tests.test_generate import _hf_greedy

SYSTEM = "Be brief."
PROMPT_RECORDS = [
    {"messages": [{"role": "user", "content": "Join apple and river."}, {"role": "assistant", "content": "no"}]},
    {"prompt": "What is the capital of France?", "reference": "Paris"},
    {"instruction": "Sort these numbers.", "input": "3 1 2 5 4 9 8 7 6 10 12 11 0"},
    {"conversations": [{"from": "system", "value": "Answer in French."}, {"from": "human", "value": "Hello!"}]},
    {"id": "q-5", "prompt": "Compute 12 + 30.", "completion": "42"},
]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _settings(model_dir, prompts, **kw):
  return synth.Settings(model=str(model_dir), prompts=str(prompts), **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_records_equal_transformers_generate(family, tmp_path):
  import torch
  import transformers
  model_dir, tok = make_tiny_chat_model(tmp_path, family, seed=2)
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", PROMPT_RECORDS)
  model, tokenizer, stop_ids = load_model(str(model_dir))
  out = tmp_path / "out.jsonl"
  n_new = 10
  synth.run(model, tokenizer, stop_ids, _settings(model_dir, prompts, max_new_tokens=n_new, system=SYSTEM,
                                                  token_ids=True), str(out), synth.Options(batch_size=2, chunk=3))
  recs = {r["id"]: r for r in _read_jsonl(out)}
  sys_turn = {"role": "system", "content": SYSTEM}
  convs = [[sys_turn, {"role": "user", "content": "Join apple and river."}],
           [sys_turn, {"role": "user", "content": "What is the capital of France?"}],
           [sys_turn, {"role": "user", "content": "Sort these numbers.\n\n3 1 2 5 4 9 8 7 6 10 12 11 0"}],
           [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello!"}],
           [sys_turn, {"role": "user", "content": "Compute 12 + 30."}]]
  hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  want_ids = {}
  for rid, conv in zip([0, 1, 2, 3, "q-5"], convs):
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    want_ids[rid] = _hf_greedy(hf, list(ids), n_new, list(stop_ids))
  # a reply that decodes to nothing (a random model may emit only special tokens) is not kept
  kept = [rid for rid, ids in want_ids.items() if tok.decode(ids, skip_special_tokens=True).strip()]
  assert list(recs) == kept and kept, family
  for rid, r in recs.items():
    want = want_ids[rid]
    assert r["sample"] == 0 and r["messages"][:-1] == convs[[0, 1, 2, 3, "q-5"].index(rid)]
    assert r["completion_ids"] == want, (family, rid)
    assert r["messages"][-1] == {"role": "assistant", "content": tok.decode(want, skip_special_tokens=True)}
    assert r["finish"] == ("stop" if want[-1] in stop_ids else "length")
    assert r.get("reference") == {0: "no", 1: "Paris", "q-5": "42"}.get(rid)
    assert r["generation"] == {"model": str(model_dir), "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                               "max_new_tokens": n_new, "seed": 0}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  """A tiny llama chat model (dir, tokenizer) and its loaded (model, tokenizer, stop ids)."""
  model_dir, tok = make_tiny_chat_model(tmp_path_factory.mktemp("synth_llama"), "llama", seed=4)
  return model_dir, load_model(str(model_dir))


def _prompt_rows(n, references=None):
  words = ["apple", "river", "stone", "cloud", "green", "light", "music", "table"]
  return [{"messages": [{"role": "user", "content": f"Join {words[i % 8]} and {words[(3 * i + 1) % 8]}" + "!" * i}],
           **({"reference": references[i]} if references else {})} for i in range(n)]


def test_same_seed_same_samples_on_one_device_and_on_a_2x2x2_mesh(tmp_path):
  from jaxtune import mesh as mesh_lib
  from jaxtune.generate import model_mesh
  from flax import nnx
  model_dir, _ = make_tiny_chat_model(tmp_path, "gemma3", seed=1)  # sliding and full layers, 2 kv heads
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(7))
  settings = _settings(model_dir, prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7, token_ids=True)

  model, tok, stop = load_model(str(model_dir))
  synth.run(model, tok, stop, settings, str(tmp_path / "one.jsonl"))
  mesh = mesh_lib.make_mesh(2, 2, 2)
  sharded, tok, stop = load_model(str(model_dir), mesh=mesh)
  assert model_mesh(nnx.state(sharded)) is mesh
  synth.run(sharded, tok, stop, settings, str(tmp_path / "eight.jsonl"), synth.Options(batch_size=4, chunk=3))

  one, eight = (tmp_path / "one.jsonl").read_text(), (tmp_path / "eight.jsonl").read_text()
  assert one == eight
  recs = [json.loads(line) for line in one.splitlines()]
  assert len(recs) >= 18 and len({tuple(r["completion_ids"]) for r in recs}) > 14  # samples do differ
  synth.run(model, tok, stop, _settings(model_dir, prompts, n=3, temperature=1.0, top_p=0.9, max_new_tokens=12,
                                        seed=8, token_ids=True), str(tmp_path / "seed8.jsonl"))
  assert (tmp_path / "seed8.jsonl").read_text() != one


def test_each_verify_mode_keeps_exactly_the_right_samples(llama, tmp_path):
  model_dir, (model, tok, stop) = llama
  n, P = 3, 5
  kw = dict(n=n, temperature=1.0, max_new_tokens=6, seed=1)
  base_prompts = _write_jsonl(tmp_path / "base.jsonl", _prompt_rows(P))
  all_stats = synth.run(model, tok, stop, _settings(model_dir, base_prompts, **kw), str(tmp_path / "all.jsonl"))
  base = _read_jsonl(tmp_path / "all.jsonl")
  text = {(r["id"], r["sample"]): r["messages"][-1]["content"] for r in base}
  assert all_stats["kept"] == len(base) == all_stats["passed"] and len(base) >= 12
  assert all_stats["samples"] == n * P and all_stats["prompts"] == P
  # the records are training data as they are: every one is an example, none dropped
  from jaxtune.config import Config
  from jaxtune.data import report
  from jaxtune.recipes import cpu_recipe
  data = report.stats(Config.from_dict(cpu_recipe(f"{model_dir},{tmp_path / 'all.jsonl'}")))
  assert (data["records"], data["examples"], data["malformed"], data["dropped"]) == (len(base), len(base), 0, 0)

  def keys(path):
    return [(r["id"], r["sample"]) for r in _read_jsonl(path)]

  # exact: each prompt's reference is the text of one of its samples (whitespace changed)
  refs = ["  " + " \n".join(text.get((i, i % n), "<none>").split()) + " " for i in range(P)]
  ref_prompts = _write_jsonl(tmp_path / "refs.jsonl", _prompt_rows(P, refs))
  want = [(i, s) for i in range(P) for s in range(n) if (i, s) in text and " ".join(text[(i, s)].split()) ==
          " ".join(refs[i].split())]
  assert {(i, i % n) for i in range(P) if (i, i % n) in text} <= set(want) and len(want) < len(base)
  runs = {}
  for keep in ("all", "one-per-prompt", "first"):
    out = tmp_path / f"exact-{keep}.jsonl"
    runs[keep] = synth.run(model, tok, stop, _settings(model_dir, ref_prompts, verify="exact", keep=keep, **kw),
                           str(out))
    firsts = [min(s for j, s in want if j == i) for i in range(P) if any(j == i for j, _ in want)]
    assert keys(out) == (want if keep == "all" else [(i, s) for i, s in zip(sorted({i for i, _ in want}), firsts)])
  assert runs["all"]["samples"] == runs["one-per-prompt"]["samples"] == n * P
  assert runs["first"]["samples"] < n * P  # sampling stops at a prompt's first pass
  assert runs["first"]["kept_per_prompt"] == runs["one-per-prompt"]["kept_per_prompt"]
  assert runs["all"]["passed"] == runs["all"]["kept"] == len(want)

  # regex: the first word; the reference is the first word of sample 1
  firsts = {k: v.split()[0] for k, v in text.items() if v.split()}
  refs = [firsts.get((i, 1), "<none>") for i in range(P)]
  out = tmp_path / "regex.jsonl"
  synth.run(model, tok, stop, _settings(model_dir, _write_jsonl(tmp_path / "r.jsonl", _prompt_rows(P, refs)),
                                        verify=r"regex:^\s*(\S+)", **kw), str(out))
  assert keys(out) == [(i, s) for i in range(P) for s in range(n) if firsts.get((i, s)) == refs[i]]

  # python: a user function of the completion
  out = tmp_path / "python.jsonl"
  synth.run(model, tok, stop, _settings(model_dir, base_prompts, verify="python:tests.helpers.synth_checks:"
                                        "first_char_even", **kw), str(out))
  want = [k for k in sorted(text, key=lambda k: (k[0], k[1])) if ord(text[k][0]) % 2 == 0]
  assert keys(out) == want and 0 < len(want) < len(base)
  assert all(r["messages"][-1]["content"] == text[(r["id"], r["sample"])] for r in _read_jsonl(out))


def test_a_killed_job_restarts_into_the_same_file(llama, tmp_path, monkeypatch):
  """Killed on one device mid-file (SIGKILL from inside its verify function), then the tail damaged as a kill
  in the middle of a write would leave it; restarted on a (2, 2, 2) mesh of 8 devices."""
  import subprocess

  from tests.helpers.cli import ROOT, cli_cmd, cli_env, jaxtune
  model_dir, (model, tok, stop) = llama
  P = 12
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(P, [f"r{i}" for i in range(P)]))
  args = dict(n=2, temperature=1.0, max_new_tokens=8, seed=3,
              verify="python:tests.helpers.synth_checks:kill_at_reference")
  synth.run(model, tok, stop, _settings(model_dir, prompts, **args), str(tmp_path / "whole.jsonl"))
  whole = (tmp_path / "whole.jsonl").read_text()
  assert len(whole.splitlines()) == 2 * P

  out = str(tmp_path / "out.jsonl")
  cli = ["synth", "--model", str(model_dir), "--prompts", prompts, "--out", out, "--n", "2", "--temperature", "1",
         "--max-new-tokens", "8", "--seed", "3", "--verify", args["verify"], "--chunk", "2", "--batch-size", "2"]
  monkeypatch.setenv("SYNTH_KILL_AT", "r7")  # SIGKILL while checking the 4th chunk (prompts 6 and 7)
  p = jaxtune(*cli, check=False)
  assert p.returncode == -9, p.stdout + p.stderr
  killed = open(out).read()
  assert killed.endswith("\n") and killed == "".join(whole.splitlines(keepends=True)[:12])  # 3 chunks, whole lines
  # as if killed while writing the next chunk: its records written (the last one torn), its progress rows not
  with open(out, "a") as f:
    f.write(whole.splitlines(keepends=True)[12] + whole.splitlines(keepends=True)[13][:40])
  with open(out + ".progress", "a") as f:
    f.write('{"id": 6, "sam')

  monkeypatch.delenv("SYNTH_KILL_AT")
  # resumed on 8 devices with a (2, 2, 2) mesh: the rest of the file is the same as on one device
  env = dict(cli_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
  p = subprocess.run(cli_cmd(*cli[:-2], "--batch-size", "4", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                             "--config.mesh.tensor=2"), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 0, p.stdout + p.stderr
  assert "resuming" in p.stdout and "6 prompts already finished" in p.stdout
  assert "of 8 devices" not in p.stderr  # every device in the mesh (no "mesh ... uses N of 8 devices" warning)
  assert open(out).read() == whole
  stats = json.load(open(out + ".stats.json"))
  assert stats == json.load(open(str(tmp_path / "whole.jsonl") + ".stats.json"))
  assert stats["prompts"] == P and stats["kept_per_prompt"] == {"2": P}

  from jaxtune import cli as cli_lib
  with pytest.raises(SystemExit, match=r"other settings \(seed: 3 then, 4 now\)"):  # refused before the model loads
    cli_lib.main([*cli[:-4], "--seed", "4"])
  with pytest.raises(SystemExit, match=r"other settings \(model: .* then, '/nonexistent' now\)"):
    cli_lib.main([*cli[:-4], "--model", "/nonexistent"])
  assert open(out).read() == whole
  assert os.path.exists(out + ".progress")


@pytest.mark.parametrize("args, msg", [
    (["--config.train.steps=3"], "reads only --config.mesh.data/fsdp/tensor and --config.model.dtype; got "
                                 "--config.train.steps=3"),
    (["--config.mesh.dat=2"], "unknown config key 'mesh.dat'"),
    (["--verify", "regex:("], "not a valid regular expression"),
    (["--keep", "best"], "--keep 'best': expected one of all, first, one-per-prompt"),
    (["--n", "0"], "--n 0"),
])
def test_bad_arguments_are_one_error_line(args, msg, tmp_path):
  from jaxtune import cli
  with pytest.raises(SystemExit) as e:
    cli.main(["synth", "--model", "m", "--prompts", "p.jsonl", "--out", str(tmp_path / "o.jsonl"), *args])
  assert str(e.value).startswith("error: ") and msg in str(e.value) and "\n" not in str(e.value)


def test_two_hosts_write_the_file_of_one_device(llama, tmp_path):
  """Two `jax.distributed` processes of 4 devices each decode the global batch together (process 0 writes):
  the same file as one device."""
  import subprocess

  from tests.helpers.cli import ROOT, cli_cmd
  from tests.helpers.cli import free_port
  model_dir, (model, tok, stop) = llama
  prompts = _write_jsonl(tmp_path / "prompts.jsonl", _prompt_rows(6))
  kw = dict(n=2, temperature=1.0, max_new_tokens=6, seed=5)
  synth.run(model, tok, stop, _settings(model_dir, prompts, **kw), str(tmp_path / "one.jsonl"))
  out = str(tmp_path / "two.jsonl")
  argv = cli_cmd("synth", "--model", str(model_dir), "--prompts", prompts, "--out", out, "--n", "2",
                 "--temperature", "1", "--max-new-tokens", "6", "--seed", "5", "--batch-size", "8", "--chunk", "4")
  port = free_port()
  procs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu",
                                     XLA_FLAGS="--xla_force_host_platform_device_count=4",
                                     JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  outs = [pr.communicate(timeout=300)[0] for pr in procs]
  assert [pr.returncode for pr in procs] == [0, 0], "\n".join(outs)
  assert open(out).read() == (tmp_path / "one.jsonl").read_text()
  assert "synth: 6 prompts" in outs[0] and "synth:" not in outs[1]  # process 0 alone reports
