"""Decode throughput of `jaxtune.generate`, with transformers + torch `generate` as the reference.

  python bench/decode.py [--model HF_DIR] [--batch 1,16] [--max-new-tokens N] [--repeats R] [--no-torch]

What runs:
  * Model: an HF checkpoint directory with its tokenizer; by default the demo base model (the untrained tiny
    Llama that configs/demo.py builds through `jaxtune.demo.assets.prepare`, cached).
  * Prompts: the user turns of the demo's held-out tasks (or of `--prompts JSONL`), chat-templated by
    `jaxtune.generate.encode_prompts`; batch B takes the first B. Both sides get the same token ids.
  * jaxtune: `load_pretrained` (float32) and `generate_ids` greedy with no stop ids, so every row decodes
    exactly --max-new-tokens tokens; its `timings` give the prefill time and the decode-loop time (each
    blocked on). One untimed call first compiles; then --repeats timed calls.
  * torch: `AutoModelForCausalLM.from_pretrained` (float32, sdpa on CPU), `generate(do_sample=False,
    use_cache=True, eos_token_id=None)` on the left-padded ids with their attention mask, so it also decodes
    exactly --max-new-tokens tokens. A pass-through logits processor marks the first scoring (the end of the
    prompt forward, generate's set-up included): prefill = start -> that mark, decode = that mark -> return,
    which covers N - 1 cached forward steps. One untimed warm-up call first.

Each side runs in its own child process (peak memory is each side's own), jaxtune first.

Figures per batch size (medians over the repeats):
  tokens_per_s  new tokens / decode time: jaxtune B*N / decode-loop time (N cached forward steps),
                torch B*(N-1) / decode time (N-1 cached forward steps)
  e2e_tokens_per_s  B*N / (prefill + decode)
  prefill_ms    the prompt forward (jaxtune pads prompts to a power-of-two bucket of at least 32 tokens)
  peak_mem_mb   host peak RSS of the child so far (device peak bytes on GPU)
The greedy tokens of the two sides are compared row by row (float32 both; rows may diverge after a near tie).

Output ends with, per batch size:
  RESULT jaxtune batch=B tokens_per_s=... e2e_tokens_per_s=... prefill_ms=... peak_mem_mb=...
  RESULT torch batch=B tokens_per_s=... e2e_tokens_per_s=... prefill_ms=... peak_mem_mb=...
  RESULT ratio batch=B jaxtune_over_torch=... same_tokens_rows=...   (rows of B with identical tokens)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import results  # noqa: E402  (bench/ is the script's own dir)



def host_peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def demo_model_dir() -> str:
  """The demo base model directory (built and cached by configs/demo.py's assets on first use)."""
  import importlib.util

  from jaxtune.config import Config
  from jaxtune.demo import assets
  spec = importlib.util.spec_from_file_location("demo_config", os.path.join(REPO, "configs", "demo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = Config.from_dict(mod.get_config())
  return str(assets.prepare(cfg, log=lambda m: print(m, flush=True)).model_dir)


def make_prompts(model_dir: str, prompts_path: str | None, n: int) -> tuple[list[list[int]], int]:
  """(n chat-templated prompts as token ids, pad id) from a JSONL of {"messages": [...]} (user turns kept)."""
  from jaxtune import generate as G
  from jaxtune.data.chat import load_tokenizer

  if prompts_path is None:
    from jaxtune.demo.assets import asset_paths
    prompts_path = str(asset_paths().heldout_path)
  convs = []
  with open(prompts_path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        msgs = json.loads(line)["messages"]
        convs.append([m for m in msgs if m["role"] != "assistant"][:1])
      if len(convs) == n:
        break
  if len(convs) < n:
    raise SystemExit(f"{prompts_path} has only {len(convs)} prompts, need {n}")
  tok = load_tokenizer(model_dir)
  ids = G.encode_prompts(tok, convs)
  return ids, G.pad_id_for(tok, G.stop_token_ids(tok))


def _summary(side: str, batch: int, prefill_s: list[float], decode_s: list[float], tokens: int, dec_tokens: int,
             peak_mb: float) -> dict:
  pre, dec = statistics.median(prefill_s), statistics.median(decode_s)
  res = dict(batch=batch, tokens_per_s=dec_tokens / dec, e2e_tokens_per_s=tokens / (pre + dec), prefill_ms=pre * 1e3,
             peak_mem_mb=peak_mb)
  print(f"[{side}] batch={batch} decode_s median={dec:.4f} (min {min(decode_s):.4f} max {max(decode_s):.4f}) "
        f"prefill_ms median={pre * 1e3:.2f} (min {min(prefill_s) * 1e3:.2f} max {max(prefill_s) * 1e3:.2f}) "
        f"-> {res['tokens_per_s']:.1f} tokens/s decode, {res['e2e_tokens_per_s']:.1f} end to end", flush=True)
  print("RESULT " + side + " " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.items()), flush=True)
  return res


# ---------------------------------------------------------------------------------------------------------------
# children

def run_jaxtune(a, job: dict) -> None:
  import jax

  import jaxtune
  from jaxtune import generate as G

  dev = jax.devices()[0]
  print(f"[jaxtune] jax {jax.__version__} on {jax.device_count()} x {dev.device_kind} ({dev.platform}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  model = jaxtune.load_pretrained(job["model"])
  N, tokens = a.max_new_tokens, {}
  for B in job["batches"]:
    prompts = job["prompts"][:B]
    t0 = time.perf_counter()
    out = G.generate_ids(model, prompts, N, [], job["pad_id"], batch_size=B)  # compiles
    print(f"[jaxtune] batch={B} first call (compile + run) {time.perf_counter() - t0:.2f}s; prompt bucket "
          f"{G.length_bucket(max(len(p) for p in prompts))} tokens, longest prompt {max(len(p) for p in prompts)}",
          flush=True)
    pre, dec = [], []
    for _ in range(a.repeats):
      t = {}
      out = G.generate_ids(model, prompts, N, [], job["pad_id"], batch_size=B, timings=t)
      assert t["new_tokens"] == B * N, t
      pre.append(t["prefill_s"])
      dec.append(t["decode_s"])
    tokens[B] = out
    peak = host_peak_rss_mb()
    if dev.platform != "cpu":
      peak = (dev.memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20 or peak
    _summary("jaxtune", B, pre, dec, B * N, B * N, peak)
  with open(job["out"] + ".jaxtune.json", "w") as f:
    json.dump({str(k): v for k, v in tokens.items()}, f)


def run_torch(a, job: dict) -> None:
  import torch
  import transformers

  class _Clock(transformers.LogitsProcessor):
    """Records when generate first scores logits (right after the prompt forward); passes scores through."""

    def __init__(self, cuda: bool):
      self.cuda, self.first, self.calls = cuda, None, 0

    def __call__(self, input_ids, scores):
      if self.first is None:
        if self.cuda:
          torch.cuda.synchronize()
        self.first = time.perf_counter()
      self.calls += 1
      return scores

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if not cuda:
    torch.set_num_threads(os.cpu_count() or 1)
  name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
  print(f"[torch] torch {torch.__version__} transformers {transformers.__version__} on {name}", flush=True)
  model = transformers.AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32,
                                                            attn_implementation="sdpa").to(device).eval()
  N, pad, tokens = a.max_new_tokens, job["pad_id"], {}
  for B in job["batches"]:
    prompts = job["prompts"][:B]
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (T - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=device)

    def gen():
      """(tokens, prefill s, decode s): the clock's first call marks the end of the prompt forward."""
      clock = _Clock(cuda)
      if cuda:
        torch.cuda.synchronize()
      t0 = time.perf_counter()
      with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, do_sample=False, use_cache=True, max_new_tokens=N,
                             eos_token_id=None, pad_token_id=pad,
                             logits_processor=transformers.LogitsProcessorList([clock]))
      if cuda:
        torch.cuda.synchronize()
      t1 = time.perf_counter()
      assert out.shape == (B, T + N) and clock.calls == N, (out.shape, clock.calls)
      return out, clock.first - t0, t1 - clock.first

    gen()  # warm-up
    pre, dec = [], []
    for _ in range(a.repeats):
      out, p_s, d_s = gen()
      pre.append(p_s)
      dec.append(d_s)
    tokens[B] = out[:, T:].tolist()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else host_peak_rss_mb()
    _summary("torch", B, pre, dec, B * N, B * (N - 1), peak)
  with open(job["out"] + ".torch.json", "w") as f:
    json.dump({str(k): v for k, v in tokens.items()}, f)


# ---------------------------------------------------------------------------------------------------------------
# parent

def _fmt(r: dict) -> str:
  return " ".join(f"{k}={int(v)}" if k == "batch" else f"{k}={v:.2f}" for k, v in r.items())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default=None, help="HF model dir with tokenizer (default: the demo base model)")
  p.add_argument("--prompts", default=None, help="JSONL of {\"messages\": [...]} (default: the demo held-out set)")
  p.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
  p.add_argument("--max-new-tokens", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (after one warm-up)")
  p.add_argument("--no-torch", action="store_true", help="skip the transformers + torch reference")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_job", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a._child:
    with open(a._job) as f:
      job = json.load(f)
    (run_jaxtune if a._child == "jaxtune" else run_torch)(a, job)
    return 0

  if a.max_new_tokens < 2 or a.repeats < 1:
    raise SystemExit("--max-new-tokens must be >= 2 and --repeats >= 1")
  batches = [int(x) for x in a.batch.split(",")]
  a.passthrough = ["--max-new-tokens", str(a.max_new_tokens), "--repeats", str(a.repeats)]
  model = a.model or demo_model_dir()
  prompts, pad_id = make_prompts(model, a.prompts, max(batches))
  lens = [len(x) for x in prompts]
  print(f"model={model} batches={batches} max_new_tokens={a.max_new_tokens} repeats={a.repeats}; prompt tokens "
        f"min={min(lens)} max={max(lens)}; greedy, no stop tokens (every row decodes max_new_tokens)", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    job = {"model": model, "prompts": prompts, "pad_id": pad_id, "batches": batches,
           "out": os.path.join(tmp, "tokens")}
    ok, jx, th, toks = results.compare_sides(__file__, a, job, tmp, len(batches))

  for r in jx:
    print(f"RESULT jaxtune {_fmt(r)}", flush=True)
  for r in th:
    print(f"RESULT torch {_fmt(r)}", flush=True)
  for r_j, r_t in zip(jx, th):
    B = str(int(r_j["batch"]))
    same = sum(x == y for x, y in zip(toks.get("jaxtune", {}).get(B, []), toks.get("torch", {}).get(B, [])))
    print(f"RESULT ratio batch={B} jaxtune_over_torch={r_j['tokens_per_s'] / r_t['tokens_per_s']:.3f} "
          f"same_tokens_rows={same}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
