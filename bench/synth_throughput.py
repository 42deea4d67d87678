"""End-to-end throughput of `jaxtune synth` against transformers + torch `generate` on the same checkpoint,
prompts and greedy settings, with the generated tokens of both sides compared.

  python bench/synth_throughput.py [--model HF_DIR] [--prompts JSONL] [--n-prompts 64] [--batch 1,16,64]
      [--max-new-tokens 64] [--repeats 1] [--dtype float32|bfloat16] [--mesh D,F,T] [--no-torch]

What runs (each side in its own child process, jaxtune first):
  * Model: an HF checkpoint directory with its tokenizer; by default the demo base model (built and cached by
    `jaxtune.demo.assets.prepare` from configs/demo.py). Prompts: the first --n-prompts records of --prompts
    (default: the demo's held-out tasks), copied into a JSONL file in the form synth reads.
  * jaxtune: `jaxtune.generate.load_model` (the mesh of --mesh, default every device data-parallel; --dtype)
    and `jaxtune.synth.run` -- what `jaxtune synth` runs -- greedy, `--batch-size B`, `--token-ids`, one
    chunk: it reads the prompts JSONL, renders the chat template, decodes, writes OUT.jsonl, its progress
    file and its stats. One untimed run first compiles every shape; then --repeats timed runs (--overwrite).
  * torch: `AutoModelForCausalLM.from_pretrained` (--dtype; sdpa), then the same end-to-end span by hand:
    read the JSONL (`jaxtune.data.prompts.iter_prompts`, the same reader), render each conversation with
    `apply_chat_template`, left-pad batches of B in input order, `generate(do_sample=False, max_new_tokens=N,
    eos_token_id=<the checkpoint's declared eos ids>)`, cut each row after its first eos, decode, write one
    JSONL record per prompt. One untimed warm-up batch first; then --repeats timed runs.
  * Both stop where the checkpoint's generation_config.json / config.json say (as `jaxtune synth` does).

Figures per batch size (medians over the repeats):
  tokens_per_s   new tokens (eos included, padding not) / wall time of the whole span
  prompts_per_s  prompts / wall time
  wall_s         the span: reading the prompts JSONL to the last line written
Tokens: per prompt, the jaxtune record's `completion_ids` must equal torch's tokens; a prompt whose reply
decodes to nothing is not written by synth (nothing to train on), and counts as equal when torch's reply
also decodes to nothing. In float32 both sides agree (a near tie can flip a token); bfloat16 may differ.

Output ends with, per batch size:
  RESULT jaxtune batch=B tokens_per_s=... prompts_per_s=... wall_s=... new_tokens=...
  RESULT torch batch=B tokens_per_s=... prompts_per_s=... wall_s=... new_tokens=...
  RESULT ratio batch=B jaxtune_over_torch=... same_tokens_prompts=... prompts=...

GPU (one H100/H200; a local instruct checkpoint and a prompts file, nothing downloaded by the script):
  python bench/synth_throughput.py --model /models/Llama-3.2-1B-Instruct --prompts prompts.jsonl \\
      --n-prompts 256 --batch 1,16,64 --max-new-tokens 256 --dtype float32
  python bench/synth_throughput.py --model /models/Llama-3.2-1B-Instruct --prompts prompts.jsonl \\
      --n-prompts 256 --batch 1,16,64 --max-new-tokens 256 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import results  # noqa: E402  (bench/ is the script's own dir)


def write_prompts(src: str | None, n: int, out: str) -> int:
  """The first n prompts of `src` (default: the demo held-out set) as {"messages": [...]} lines; returns n."""
  from jaxtune.data.prompts import iter_prompts
  if src is None:
    from jaxtune.demo.assets import asset_paths
    src = str(asset_paths().heldout_path)
  rows = []
  for p in iter_prompts(src):
    rows.append({"messages": p.messages})
    if len(rows) == n:
      break
  if len(rows) < n:
    raise SystemExit(f"{src} has only {len(rows)} prompts, need {n}")
  with open(out, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return n


def _summary(side: str, batch: int, walls: list[float], new_tokens: int, prompts: int) -> dict:
  wall = statistics.median(walls)
  res = dict(batch=batch, tokens_per_s=new_tokens / wall, prompts_per_s=prompts / wall, wall_s=wall,
             new_tokens=new_tokens)
  print(f"[{side}] batch={batch} wall_s median={wall:.3f} (min {min(walls):.3f} max {max(walls):.3f}) -> "
        f"{res['tokens_per_s']:.1f} tokens/s, {res['prompts_per_s']:.2f} prompts/s ({new_tokens} new tokens)",
        flush=True)
  print("RESULT " + side + " " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.items()), flush=True)
  return res


# ---------------------------------------------------------------------------------------------------------------
# children

def run_jaxtune(a, job: dict) -> None:
  import jax

  from jaxtune import log as log_lib
  from jaxtune import mesh as mesh_lib
  from jaxtune.synth import job as synth
  from jaxtune.generate import load_model

  log_lib.setup("WARNING", quiet=True)
  dev = jax.devices()[0]
  print(f"[jaxtune] jax {jax.__version__} on {jax.device_count()} x {dev.device_kind} ({dev.platform})", flush=True)
  d, f, t = (int(x) for x in a.mesh.split(","))
  model, tok, stop = load_model(job["model"], mesh=mesh_lib.make_mesh(d, f, t), dtype=a.dtype)
  settings = synth.Settings(model=job["model"], prompts=job["prompts"], max_new_tokens=a.max_new_tokens,
                            token_ids=True)
  tokens = {}
  for B in job["batches"]:
    out = f"{job['out']}.jaxtune.{B}.jsonl"
    opts = synth.Options(batch_size=B, chunk=job["n_prompts"], overwrite=True)
    t0 = time.perf_counter()
    synth.run(model, tok, stop, settings, out, opts)  # compiles
    print(f"[jaxtune] batch={B} first run (compile + run) {time.perf_counter() - t0:.2f}s", flush=True)
    walls = []
    for _ in range(a.repeats):
      t0 = time.perf_counter()
      stats = synth.run(model, tok, stop, settings, out, opts)
      walls.append(time.perf_counter() - t0)
    with open(out, encoding="utf-8") as fh:
      tokens[B] = {json.loads(line)["id"]: json.loads(line)["completion_ids"] for line in fh}
    _summary("jaxtune", B, walls, stats["new_tokens"], stats["prompts"])
  with open(job["out"] + ".jaxtune.json", "w") as fh:
    json.dump({str(k): v for k, v in tokens.items()}, fh)


def run_torch(a, job: dict) -> None:
  import torch
  import transformers

  from jaxtune.data.prompts import iter_prompts
  from jaxtune.generate import declared_eos_ids

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if not cuda:
    torch.set_num_threads(os.cpu_count() or 1)
  name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
  print(f"[torch] torch {torch.__version__} transformers {transformers.__version__} on {name}", flush=True)
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
  model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype,
                                                            attn_implementation="sdpa").to(device).eval()
  tok = transformers.AutoTokenizer.from_pretrained(job["model"])
  eos = declared_eos_ids(job["model"]) or [tok.eos_token_id]
  pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
  N = a.max_new_tokens

  def run(B: int, out: str, limit: int | None = None) -> tuple[int, dict[int, list[int]]]:
    """The whole span for batch B: (new tokens, {prompt index: tokens})."""
    convs = [p.messages for p in iter_prompts(job["prompts"])][:limit]
    ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for c in convs]
    got, new = {}, 0
    with open(out, "w", encoding="utf-8") as fh:
      for i in range(0, len(ids), B):
        rows = ids[i:i + B]
        T = max(len(r) for r in rows)
        x = torch.tensor([[pad] * (T - len(r)) + list(r) for r in rows], device=device)
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
          y = model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=N, eos_token_id=eos,
                             pad_token_id=pad, top_p=None, top_k=None, temperature=None)
        for j, row in enumerate(y[:, T:].tolist()):
          cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
          toks = row[:cut]
          got[i + j], new = toks, new + len(toks)
          text = tok.decode(toks, skip_special_tokens=True)
          fh.write(json.dumps({"id": i + j, "messages": convs[i + j] + [{"role": "assistant", "content": text}],
                               "completion_ids": toks}) + "\n")
    return new, got

  tokens = {}
  for B in job["batches"]:
    out = f"{job['out']}.torch.{B}.jsonl"
    run(B, out, limit=B)  # warm-up
    walls = []
    for _ in range(a.repeats):
      if cuda:
        torch.cuda.synchronize()
      t0 = time.perf_counter()
      new, got = run(B, out)
      walls.append(time.perf_counter() - t0)
    tokens[B] = got
    _summary("torch", B, walls, new, job["n_prompts"])
  with open(job["out"] + ".torch.json", "w") as fh:
    json.dump({str(k): {str(i): t for i, t in v.items()} for k, v in tokens.items()}, fh)


# ---------------------------------------------------------------------------------------------------------------
# parent

def _same(jx: dict, th: dict, tok, n: int) -> int:
  """Prompts whose tokens agree (a prompt synth did not write: torch's reply decodes to nothing too)."""
  same = 0
  for i in range(n):
    t = th.get(str(i))
    j = jx.get(str(i))
    if t is None:
      continue
    same += (j == t) if j is not None else not tok.decode(t, skip_special_tokens=True).strip()
  return same


def _fmt(r: dict) -> str:
  return " ".join(f"{k}={int(v)}" if k in ("batch", "new_tokens") else f"{k}={v:.3f}" for k, v in r.items())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default=None, help="HF model dir with tokenizer (default: the demo base model)")
  p.add_argument("--prompts", default=None, help="prompts in any form synth reads (default: the demo held-out set)")
  p.add_argument("--n-prompts", type=int, default=64)
  p.add_argument("--batch", default="1,16,64", help="comma-separated batch sizes")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=1, help="timed runs per batch size (after one warm-up)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--mesh", default="-1,1,1", help="jaxtune mesh D,F,T (data, fsdp, tensor)")
  p.add_argument("--no-torch", action="store_true", help="skip the transformers + torch reference")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_job", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  a.passthrough = ["--max-new-tokens", str(a.max_new_tokens), "--repeats", str(a.repeats), "--dtype", a.dtype,
                   f"--mesh={a.mesh}"]
  if a._child:
    with open(a._job) as f:
      job = json.load(f)
    (run_jaxtune if a._child == "jaxtune" else run_torch)(a, job)
    return 0

  if a.max_new_tokens < 1 or a.repeats < 1 or a.n_prompts < 1:
    raise SystemExit("--max-new-tokens, --repeats and --n-prompts must be >= 1")
  batches = [int(x) for x in a.batch.split(",")]
  if a.model is None:
    from decode import demo_model_dir
    model = demo_model_dir()
  else:
    model = a.model
  with tempfile.TemporaryDirectory() as tmp:
    prompts = os.path.join(tmp, "prompts.jsonl")
    n = write_prompts(a.prompts, a.n_prompts, prompts)
    print(f"model={model} prompts={n} batches={batches} max_new_tokens={a.max_new_tokens} repeats={a.repeats} "
          f"dtype={a.dtype}; greedy, stopping at the checkpoint's eos ids", flush=True)
    job = {"model": model, "prompts": prompts, "n_prompts": n, "batches": batches, "out": os.path.join(tmp, "out")}
    ok, jx, th, toks = results.compare_sides(__file__, a, job, tmp, len(batches))

  for r in jx:
    print(f"RESULT jaxtune {_fmt(r)}", flush=True)
  for r in th:
    print(f"RESULT torch {_fmt(r)}", flush=True)
  if th:
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    for r_j, r_t in zip(jx, th):
      B = str(int(r_j["batch"]))
      same = _same(toks.get("jaxtune", {}).get(B, {}), toks.get("torch", {}).get(B, {}), tok, n)
      print(f"RESULT ratio batch={B} jaxtune_over_torch={r_j['tokens_per_s'] / r_t['tokens_per_s']:.3f} "
            f"same_tokens_prompts={same} prompts={n}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
