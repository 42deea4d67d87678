"""Train-step throughput of jaxtune, with a plain transformers + torch loop as the reference.

  python bench/train_throughput.py --shape small|llama3.2-1b|llama3.2-3b|micro|HF_DIR \
      [--seq-len N] [--batch B] [--dtype float32|bfloat16] [--mesh D,F,T] [--steps N] [--warmup W] \
      [--remat none|full|dots|dots_no_batch] [--attention auto|xla|blockwise|cudnn] [--vs-torch] [--xla-flags "..."]

What runs:
  * jaxtune: the real train step (`jit_train_step` over `init_state(build_model(...), make_optimizer(...))`,
    on a mesh from `jaxtune.mesh.make_mesh`), random weights, on packed batches: random token examples of
    varied lengths packed by `jaxtune.data.packing.pack_rows`, each with an untrained prompt part and a
    trained answer part (loss mask).
  * with --vs-torch: `AutoModelForCausalLM.from_config` on the same HF config (random weights), torch AdamW
    (decay on >= 2-d params only, like jaxtune), `clip_grad_norm_`, the same lr / betas / eps / weight decay /
    clip, the same batches (ids and positions; transformers builds the packed block-causal mask from the
    position ids) and the loss on the same target positions (masked next-token cross-entropy summed and divided
    by the number of trained targets). bf16 runs use float32 params with `torch.autocast(bfloat16)`, the analogue
    of jaxtune's dtype=bfloat16 / param_dtype=float32.

Each side runs in its own child process, one after the other, so that peak memory (host RSS on CPU, device
peak on GPU) is each side's own and JAX's GPU memory pool never starves torch. The batches are generated once
by the parent and handed to both children in an .npz file.

Tokens are counted the same way for both: the non-padding tokens of each step's batch (segment_ids > 0);
the B*T slot throughput is printed beside it. Timing: every step is blocked on (loss read back), the first
`--warmup` steps (compile / allocator warm-up) are excluded; the RESULT tokens_per_s is steady-state total
tokens over total time, and the per-step medians with min/max are printed on the lines before it.

Output ends with (each on its own line; `nan` where a figure does not exist, e.g. MFU on CPU):
  RESULT jaxtune tokens_per_s=... step_ms=... mfu=... peak_mem_mb=... compile_s=...
  RESULT torch tokens_per_s=... step_ms=... peak_mem_mb=...        (--vs-torch)
  RESULT ratio jaxtune_over_torch=...                                (--vs-torch)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from results import parse_result  # noqa: E402  (bench/ is the script's own dir)

# Shapes: HF config.json fields (a LlamaForCausalLM), default seq_len and batch.
_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", attention_bias=False,
              mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LLAMA32 = dict(_LLAMA, vocab_size=128256, intermediate_size=8192, num_key_value_heads=8, rms_norm_eps=1e-5,
                tie_word_embeddings=True, max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001,
                pad_token_id=None,
                rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=8192))
SHAPES = {
    # 2-step smoke shape for the tests.
    "micro": (dict(_LLAMA, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                   tie_word_embeddings=False, max_position_embeddings=512,
                   rope_parameters=dict(rope_type="default", rope_theta=10000.0)), 64, 2),
    # ~32M parameters: the CPU comparison shape.
    "small": (dict(_LLAMA, vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=64, rms_norm_eps=1e-5,
                   tie_word_embeddings=False, max_position_embeddings=4096,
                   rope_parameters=dict(rope_type="default", rope_theta=500000.0)), 512, 8),
    # meta-llama/Llama-3.2-1B and -3B architectures (config only, random weights).
    "llama3.2-1b": (dict(_LLAMA32, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, head_dim=64),
                    4096, 2),
    "llama3.2-3b": (dict(_LLAMA32, hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, head_dim=128),
                    4096, 1),
}
# The optimizer both sides use (constant lr: the schedule is not what is measured).
OPTIM = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip_norm=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers (no jax / torch imports here: the parent process stays light)

def hf_config_for(shape: str) -> tuple[dict, int, int]:
  """(HF config.json dict, default seq_len, default batch) of a named shape or an HF model directory."""
  if shape in SHAPES:
    cfg, t, b = SHAPES[shape]
    return json.loads(json.dumps(cfg)), t, b
  path = os.path.join(shape, "config.json")
  if not os.path.exists(path):
    raise SystemExit(f"--shape {shape!r}: not one of {sorted(SHAPES)} and no {path}")
  with open(path, encoding="utf-8") as f:
    return json.load(f), 2048, 4


def make_batches(vocab: int, seq_len: int, batch: int, n_batches: int, seed: int = 0) -> dict[str, np.ndarray]:
  """n_batches packed batches {field: int32 [n, B, T]} from pack_rows, plus `weights` float32 [n, B, T-1]:
  1 where position t predicts a trained token of its own segment (what jaxtune's loss counts)."""
  from jaxtune.data.packing import FIELDS, pack_rows

  rng = np.random.default_rng(seed)
  lo, hi = max(4, seq_len // 64), max(8, seq_len // 2)
  out = {k: [] for k in FIELDS}
  for _ in range(n_batches):
    examples, total = [], 0
    while total < 1.3 * batch * seq_len:  # enough that the first `batch` first-fit rows are (nearly) full
      n = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
      ids = rng.integers(1, vocab, size=n, dtype=np.int64).astype(np.int32)
      mask = np.zeros(n, np.int32)
      mask[max(1, int(n * rng.uniform(0.2, 0.7))):] = 1  # prompt untrained, answer trained
      examples.append((ids, mask))
      total += n
    rows = pack_rows(examples, seq_len, pad_id=0, packing=True)
    for k in FIELDS:
      out[k].append(rows[k][:batch])
  res = {k: np.stack(v) for k, v in out.items()}
  seg = res["segment_ids"]
  same = (seg[..., 1:] == seg[..., :-1]) & (seg[..., 1:] > 0)
  res["weights"] = ((res["loss_mask"][..., 1:] > 0) & same).astype(np.float32)
  return res


def summarize(name: str, times_s: list[float], tokens: list[int], slots: int) -> dict:
  """Prints the steady-state lines and returns the figures."""
  ms = [t * 1e3 for t in times_s]
  tps = [n / t for n, t in zip(tokens, times_s)]
  total = sum(tokens) / sum(times_s)
  print(f"[{name}] steady steps={len(times_s)}  step_ms median={statistics.median(ms):.1f} "
        f"min={min(ms):.1f} max={max(ms):.1f}", flush=True)
  print(f"[{name}] tokens/s (non-pad) median={statistics.median(tps):.1f} min={min(tps):.1f} max={max(tps):.1f} "
        f"total/time={total:.1f};  slot tokens/s (B*T) {slots * len(times_s) / sum(times_s):.1f}", flush=True)
  return {"tokens_per_s": total, "step_ms": statistics.median(ms)}


def peak_flops_for_name(name: str) -> float | None:
  from jaxtune.train.metrics import PEAK_FLOPS
  name = name.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in name:
      return PEAK_FLOPS[key]
  return None


def host_peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _fmt(x) -> str:
  if x is None or not math.isfinite(x):
    return "nan"
  return f"{x:.4g}" if abs(x) < 1 else f"{x:.2f}"


class _Usage:
  """CPU time (user/sys) and page faults over a span of this process."""

  def __enter__(self):
    self.r0, self.t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    return self

  def __exit__(self, *exc):
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - self.t0
    self.user, self.sys = r1.ru_utime - self.r0.ru_utime, r1.ru_stime - self.r0.ru_stime
    self.minflt, self.majflt = r1.ru_minflt - self.r0.ru_minflt, r1.ru_majflt - self.r0.ru_majflt
    self.wall = wall

  def line(self, name: str, steps: int) -> str:
    cpu = self.user + self.sys
    return (f"[{name}] steady CPU time user={self.user:.1f}s sys={self.sys:.1f}s = {cpu / max(steps, 1):.2f} CPU-s/step "
            f"({100 * self.sys / max(cpu, 1e-9):.0f}% sys, {cpu / max(self.wall, 1e-9):.2f} cores busy); "
            f"page faults/step minor={self.minflt / max(steps, 1):.0f} major={self.majflt / max(steps, 1):.0f}")


# ---------------------------------------------------------------------------------------------------------------
# jaxtune child

def run_jaxtune(a, hf: dict, data: dict[str, np.ndarray]) -> None:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxtune import mesh as mesh_lib
  from jaxtune.config import OptimCfg
  from jaxtune.models import ModelConfig, build_model
  from jaxtune.train.metrics import flops_per_token, peak_flops_per_device
  from jaxtune.train.optim import make_optimizer
  from jaxtune.train.state import init_state, param_count, state_shardings
  from jaxtune.train.step import jit_train_step

  cfg = ModelConfig.from_hf(hf)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
  d, f, t = (int(x) for x in a.mesh.split(","))
  mesh = mesh_lib.make_mesh(d, f, t)
  dev = mesh.devices.flat[0]
  on_gpu = dev.platform == "gpu"
  impl = None if a.attention == "xla" else a.attention  # None: jax's default path (XLA); auto: as training picks
  print(f"[jaxtune] jax {jax.__version__} on {jax.device_count()} x {dev.device_kind} ({dev.platform}); mesh "
        f"{dict(mesh.shape)}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)

  def build(impl):
    def create():
      return build_model(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=jnp.float32, remat=a.remat,
                         attention_impl=impl)

    with jax.set_mesh(mesh):
      abstract = nnx.eval_shape(create)
      graphdef, abs_state = nnx.split(abstract)
      shardings = mesh_lib.state_shardings(abs_state, mesh)
      params = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
      model = nnx.merge(graphdef, params)
      tx, schedule = make_optimizer(OptimCfg(lr=OPTIM["lr"], warmup_steps=0, schedule="constant",
                                             weight_decay=OPTIM["weight_decay"], clip_norm=OPTIM["clip_norm"],
                                             b1=OPTIM["b1"], b2=OPTIM["b2"], eps=OPTIM["eps"]), a.steps + a.warmup)
      gdef, state = init_state(model, tx)
      del model, params
      bsh = mesh_lib.batch_sharding(mesh)
      step_fn = jit_train_step(gdef, tx, schedule, 1, state_shardings(state), bsh)
      n = data["input_ids"].shape[0]
      batches = [{k: jax.device_put(data[k][i], bsh) for k in ("input_ids", "loss_mask", "segment_ids", "positions")}
                 for i in range(n)]
      t0 = time.perf_counter()
      compiled = step_fn.lower(state, batches[0]).compile()
      return state, compiled, batches, time.perf_counter() - t0

  failed = None
  try:
    state, compiled, batches, compile_s = build(impl)
  except Exception as e:  # e.g. a cuDNN build without support for this shape / mask
    if impl is None:
      raise
    failed = f"{type(e).__name__}: {str(e)[:300]}"
  if failed is not None:  # rebuilt outside the except block, so the first attempt's buffers are freed
    print(f"[jaxtune] attention_impl={impl!r} failed ({failed}); falling back to XLA", flush=True)
    impl = None
    state, compiled, batches, compile_s = build(impl)
  n_params = param_count(state.params)
  fpt = flops_per_token(n_params, cfg.num_layers, cfg.hidden_size, a.seq_len)
  cost = None
  try:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    cost = float(ca.get("flops", float("nan"))) if ca else None
  except Exception:  # not every backend reports it
    pass
  B, T = data["input_ids"].shape[1:]
  print(f"[jaxtune] params={n_params / 1e6:.1f}M dtype={a.dtype} remat={a.remat} attention_impl={impl!r} "
        f"compile_s={compile_s:.1f}; formula FLOPs/step={fpt * B * T / 1e9:.1f}G "
        f"(flops_per_token={fpt / 1e6:.1f}M x B*T); XLA cost_analysis FLOPs/step="
        f"{'n/a' if cost is None else f'{cost / 1e9:.1f}G'}", flush=True)

  tokens = [int((data["segment_ids"][i] > 0).sum()) for i in range(len(batches))]
  times, toks = [], []
  with jax.set_mesh(mesh):
    usage = _Usage()
    for i in range(a.warmup + a.steps):
      if i == a.warmup:
        usage.__enter__()
      t0 = time.perf_counter()
      state, m = compiled(state, batches[i % len(batches)])
      loss = float(m["loss"])  # blocks on the step
      dt = time.perf_counter() - t0
      n_tok = tokens[i % len(batches)]
      if i >= a.warmup:
        times.append(dt)
        toks.append(n_tok)
      print(f"[jaxtune] step {i + 1}/{a.warmup + a.steps}{' (warm-up)' if i < a.warmup else ''} loss={loss:.4f} "
            f"step_ms={dt * 1e3:.1f} tokens/s={n_tok / dt:.1f}", flush=True)
    usage.__exit__(None, None, None)
  res = summarize("jaxtune", times, toks, B * T)
  achieved = res["tokens_per_s"] * fpt
  peak = peak_flops_per_device(dev)
  mfu = achieved / (peak * mesh.size) if peak else None
  print(f"[jaxtune] achieved {achieved / 1e9:.1f} GFLOP/s (formula FLOPs/token x tokens/s, "
        f"non-pad tokens){'' if peak else '; peak FLOP/s of this device unknown: mfu=nan'}", flush=True)
  if not on_gpu and dev.platform == "cpu":
    print(usage.line("jaxtune", a.steps), flush=True)
  peak_mb = host_peak_rss_mb()
  if dev.platform != "cpu":
    stats = [d_.memory_stats() or {} for d_ in mesh.devices.flat]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use") is not None]
    if peaks:
      peak_mb = max(peaks) / 2**20
    print(f"[jaxtune] device peak bytes in use (max over mesh devices) {peak_mb:.0f} MiB; host peak RSS "
          f"{host_peak_rss_mb():.0f} MiB", flush=True)
  else:
    print(f"[jaxtune] host peak RSS {peak_mb:.0f} MiB", flush=True)
  print(f"RESULT jaxtune tokens_per_s={res['tokens_per_s']:.2f} step_ms={res['step_ms']:.1f} mfu={_fmt(mfu)} "
        f"peak_mem_mb={peak_mb:.0f} compile_s={compile_s:.2f} gflops={achieved / 1e9:.2f}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# torch child

def run_torch(a, hf: dict, data: dict[str, np.ndarray]) -> None:
  import importlib.util

  import torch
  import torch.nn.functional as F
  import transformers

  from jaxtune.models import ModelConfig
  from jaxtune.train.metrics import flops_per_token

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  if not cuda:
    torch.set_num_threads(os.cpu_count() or 1)
  attn = a.torch_attn
  if attn == "auto":
    attn = "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"
  name = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
  print(f"[torch] torch {torch.__version__} transformers {transformers.__version__} on {name}; "
        f"attn_implementation={attn}", flush=True)
  torch.manual_seed(0)
  fields = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
  config = transformers.AutoConfig.for_model(hf["model_type"], **fields)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
  model.to(device).train()
  if a.remat != "none":
    model.gradient_checkpointing_enable()
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": OPTIM["weight_decay"]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=OPTIM["lr"], betas=(OPTIM["b1"], OPTIM["b2"]), eps=OPTIM["eps"])
  n_params = sum(p.numel() for p in params)
  mcfg = ModelConfig.from_hf(hf)
  fpt = flops_per_token(n_params, mcfg.num_layers, mcfg.hidden_size, a.seq_len)
  n = data["input_ids"].shape[0]
  batches = [dict(ids=torch.from_numpy(data["input_ids"][i]).long().to(device),
                  pos=torch.from_numpy(data["positions"][i]).long().to(device),
                  w=torch.from_numpy(data["weights"][i]).to(device)) for i in range(n)]
  B, T = data["input_ids"].shape[1:]
  print(f"[torch] params={n_params / 1e6:.1f}M dtype={a.dtype} (float32 params"
        f"{', autocast bfloat16' if a.dtype == 'bfloat16' else ''}) grad checkpointing={a.remat != 'none'}",
        flush=True)
  amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bfloat16")

  def step(b):
    with amp:
      logits = model(input_ids=b["ids"], position_ids=b["pos"], use_cache=False).logits
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), b["ids"][:, 1:].reshape(-1),
                          reduction="none")
    w = b["w"].reshape(-1)
    loss = (nll * w).sum() / w.sum().clamp_min(1.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, OPTIM["clip_norm"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  tokens = [int((data["segment_ids"][i] > 0).sum()) for i in range(n)]
  times, toks = [], []
  first_s = float("nan")
  usage = _Usage()
  for i in range(a.warmup + a.steps):
    if i == a.warmup:
      usage.__enter__()
    t0 = time.perf_counter()
    loss = float(step(batches[i % n]).item())
    if cuda:
      torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if i == 0:
      first_s = dt
    if i >= a.warmup:
      times.append(dt)
      toks.append(tokens[i % n])
    print(f"[torch] step {i + 1}/{a.warmup + a.steps}{' (warm-up)' if i < a.warmup else ''} loss={loss:.4f} "
          f"step_ms={dt * 1e3:.1f} tokens/s={tokens[i % n] / dt:.1f}", flush=True)
  usage.__exit__(None, None, None)
  res = summarize("torch", times, toks, B * T)
  achieved = res["tokens_per_s"] * fpt
  peak = peak_flops_for_name(name) if cuda else None
  mfu = achieved / peak if peak else None
  print(f"[torch] achieved {achieved / 1e9:.1f} GFLOP/s (same formula); first step {first_s:.2f}s", flush=True)
  if cuda:
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(f"[torch] device max_memory_allocated {peak_mb:.0f} MiB (reserved "
          f"{torch.cuda.max_memory_reserved() / 2**20:.0f} MiB); host peak RSS {host_peak_rss_mb():.0f} MiB",
          flush=True)
  else:
    print(usage.line("torch", a.steps), flush=True)
    peak_mb = host_peak_rss_mb()
    print(f"[torch] host peak RSS {peak_mb:.0f} MiB", flush=True)
  print(f"RESULT torch tokens_per_s={res['tokens_per_s']:.2f} step_ms={res['step_ms']:.1f} mfu={_fmt(mfu)} "
        f"peak_mem_mb={peak_mb:.0f} first_step_s={first_s:.2f} gflops={achieved / 1e9:.2f}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Parent

def _child(side: str, a, data_path: str) -> tuple[int, dict | None]:
  """Runs one side in a child process, echoing its output; returns (exit code, its RESULT figures)."""
  env = dict(os.environ)
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  if side == "jaxtune" and a.xla_flags:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + a.xla_flags).strip()
  if side == "torch":
    env["JAX_PLATFORMS"] = "cpu"  # the torch child imports jaxtune configs only; keep JAX off the GPU
  cmd = [sys.executable, os.path.abspath(__file__), "--_child", side, "--_data", data_path] + a.passthrough
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
  result = None
  for line in proc.stdout:
    r = parse_result(line)
    if r and r[0] == side:
      result = r[1]
      continue  # re-printed at the end
    sys.stdout.write(line)
    sys.stdout.flush()
  return proc.wait(), result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shape", default="small", help=f"one of {sorted(SHAPES)} or an HF model directory")
  p.add_argument("--seq-len", type=int, default=None)
  p.add_argument("--batch", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes (-1: the remaining devices)")
  p.add_argument("--steps", type=int, default=8, help="timed steps (after warm-up)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  p.add_argument("--n-batches", type=int, default=4, help="distinct batches, cycled")
  p.add_argument("--remat", default="none", choices=("none", "full", "dots", "dots_no_batch"),
                 help="jaxtune remat policy; torch gets gradient checkpointing when not none")
  p.add_argument("--attention", default="auto", choices=("auto", "xla", "blockwise", "cudnn"),
                 help="jaxtune attention_impl: auto = what model.attention=auto picks per platform and row kind "
                      "(packed rows: blockwise on CPU/GPU, splash on TPU); XLA if the choice fails to compile")
  p.add_argument("--torch-attn", default="auto",
                 help="transformers attn_implementation: auto = flash_attention_2 on CUDA if installed, else sdpa")
  p.add_argument("--vs-torch", action="store_true", help="also run the transformers + torch reference")
  p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS for the jaxtune child")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_data", default=None, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  hf, t_default, b_default = hf_config_for(a.shape)
  a.seq_len = a.seq_len or t_default
  a.batch = a.batch or b_default

  if a._child:
    with np.load(a._data) as z:
      data = {k: z[k] for k in z.files}
    (run_jaxtune if a._child == "jaxtune" else run_torch)(a, hf, data)
    return 0

  if a.steps < 1 or a.warmup < 0:
    raise SystemExit("--steps must be >= 1 and --warmup >= 0")
  a.passthrough = [x for x in (argv if argv is not None else sys.argv[1:]) if x != "--vs-torch"]
  data = make_batches(hf["vocab_size"], a.seq_len, a.batch, a.n_batches, a.seed)
  seg = data["segment_ids"]
  print(f"shape={a.shape} seq_len={a.seq_len} batch={a.batch} dtype={a.dtype} steps={a.steps} warmup={a.warmup}; "
        f"{a.n_batches} packed batches: {int((seg > 0).sum()) / seg.size:.3f} of slots hold tokens, "
        f"{float((seg.max(-1)).mean()):.1f} examples/row, {int(data['weights'].sum()) / seg.size:.3f} of slots "
        f"are loss targets; tokens/s counts non-pad tokens for both sides", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "batches.npz")
    np.savez(path, **data)
    rc, jx = _child("jaxtune", a, path)
    th, rc_t = None, 0
    if a.vs_torch:
      rc_t, th = _child("torch", a, path)

  def line(side, r, keys):
    return f"RESULT {side} " + " ".join(f"{k}={_fmt(r.get(k))}" for k in keys)

  ok = True
  if jx is None:
    print(f"jaxtune child failed (exit {rc})", flush=True)
    ok = False
  else:
    print(line("jaxtune", jx, ("tokens_per_s", "step_ms", "mfu", "peak_mem_mb", "compile_s")), flush=True)
  if a.vs_torch:
    if th is None:
      print(f"torch child failed (exit {rc_t})", flush=True)
      ok = False
    else:
      print(line("torch", th, ("tokens_per_s", "step_ms", "peak_mem_mb")), flush=True)
    if jx is not None and th is not None:
      print(f"RESULT ratio jaxtune_over_torch={jx['tokens_per_s'] / th['tokens_per_s']:.3f}", flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
