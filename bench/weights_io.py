"""HF checkpoint load / export speed and host memory (issue 3, item 6).

Writes a random Llama-shaped bfloat16 checkpoint (about 2 GB by default:
vocab 32000, hidden 2048, 16 layers, intermediate 5632, sharded safetensors +
index + config.json, written with safetensors.numpy, no torch), then, in one
fresh child process per case (so RSS starts clean), measures

  load    `jaxtune.load_pretrained(dir, mesh=..., param_dtype=bf16, dtype=bf16)`
  export  `jaxtune.save_pretrained(model, out, dtype=bf16)` of the model just loaded

on 1 CPU device (mesh 1x1x1) and on 8 fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`, mesh data=1 fsdp=8 tensor=1).

Memory: before each operation the kernel's peak-RSS counter is reset
(`echo 5 > /proc/self/clear_refs`) and VmRSS read as the baseline; after it,
VmHWM is the peak. A sampling thread (every 2 ms) also records the peak of
RssAnon and RssFile separately (file-backed pages are mmapped checkpoint
pages: they count in RSS while mapped). On the CPU backend the parameters ARE
host memory, so a load necessarily raises RSS by the resident parameter bytes;
the "overhead" is the peak increase minus that. For the export the params are
already resident at the baseline, so its peak increase is all overhead.
Target (both operations): overhead <= largest tensor + 0.5 GB. GB = 1e9 bytes.

Output, one line per case (after the per-case details):
  RESULT weights_io devices=N load_s=... load_gbps=... load_peak_rss_increase_gb=... load_overhead_gb=...
         export_s=... export_gbps=... export_peak_rss_increase_gb=... export_overhead_gb=...
         params_resident_gb=... largest_tensor_gb=... target_overhead_gb=... meets_target=0|1 exact=0|1

  python bench/weights_io.py [--layers 16] [--devices 1,8] [--ckpt-dir DIR (reused if present)] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GB = 1e9


# ---------------------------------------------------------------------------------------------------------------
# /proc/self memory figures

def proc_status() -> dict[str, int]:
  """VmRSS, VmHWM, RssAnon, RssFile of this process, in bytes."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      k, _, v = line.partition(":")
      if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
        out[k] = int(v.split()[0]) * 1024
  return out


def reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


class Sampler:
  """Peak RssAnon / RssFile / VmRSS seen every `interval` s while in the `with` block."""

  def __init__(self, interval: float = 0.002):
    self.interval = interval
    self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    self._stop = threading.Event()

  def _run(self):
    while not self._stop.is_set():
      s = proc_status()
      for k in self.peak:
        self.peak[k] = max(self.peak[k], s[k])
      time.sleep(self.interval)

  def __enter__(self):
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def measure(fn):
  """(result, seconds, baseline status, peak figures) of fn() with RSS peak reset first."""
  import gc
  gc.collect()
  hwm_reset = reset_peak()
  base = proc_status()
  with Sampler() as sampler:
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
  end = proc_status()
  peak = dict(sampler.peak)
  peak["VmRSS"] = max(peak["VmRSS"], end["VmRSS"], end["VmHWM"] if hwm_reset else 0)
  return out, dt, base, peak, end


# ---------------------------------------------------------------------------------------------------------------
# The checkpoint (parent process: numpy + safetensors only)

def hf_config(a) -> dict:
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": a.vocab,
          "hidden_size": a.hidden, "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
          "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.hidden // a.heads,
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
          "torch_dtype": "bfloat16"}


def tensor_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
  """HF names and shapes of a Llama checkpoint, in HF's usual order."""
  d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
  hd = c["head_dim"]
  q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
  out = [("model.embed_tokens.weight", (v, d))]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    out += [(p + "self_attn.q_proj.weight", (q, d)), (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)), (p + "self_attn.o_proj.weight", (d, q)),
            (p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
            (p + "mlp.down_proj.weight", (d, f)),
            (p + "input_layernorm.weight", (d,)), (p + "post_attention_layernorm.weight", (d,))]
  out += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
  return out


def write_checkpoint(d: Path, cfg: dict, max_shard_bytes: int, seed: int = 0) -> None:
  """Random bf16 tensors (N(0, 0.02), norms 1 + N(0, 0.02)) as sharded safetensors + index + config."""
  import ml_dtypes
  from safetensors.numpy import save_file
  bf16 = np.dtype(ml_dtypes.bfloat16)
  rng = np.random.default_rng(seed)
  pool = (rng.standard_normal(1 << 24, dtype=np.float32) * 0.02).astype(bf16)  # 32 MB of values to tile from

  def tensor(name, shape):
    n = int(np.prod(shape))
    out = np.empty(n, bf16)
    i = 0
    while i < n:  # random windows of the pool: distinct-looking tensors without 1e9 normal draws
      start = int(rng.integers(0, pool.size // 2))
      k = min(n - i, pool.size - start)
      out[i:i + k] = pool[start:start + k]
      i += k
    out = out.reshape(shape)
    if name.endswith("norm.weight"):
      out = (out.astype(np.float32) + 1.0).astype(bf16)
    return out

  shapes = tensor_shapes(cfg)
  shards, size = [[]], 0
  for name, shape in shapes:
    nbytes = int(np.prod(shape)) * 2
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((name, shape))
    size += nbytes
  d.mkdir(parents=True, exist_ok=True)
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file({name: tensor(name, shape) for name, shape in shard}, d / fname, metadata={"format": "pt"})
    weight_map.update({name: fname for name, _ in shard})
  total = sum(int(np.prod(s)) * 2 for _, s in shapes)
  (d / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  (d / "config.json").write_text(json.dumps(cfg, indent=2))


def checkpoint_stats(d: Path) -> tuple[int, int, int]:
  """(total tensor bytes, largest tensor bytes, number of files) from the index."""
  from safetensors import safe_open
  index = json.loads((d / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  total = largest = 0
  for fname in files:
    with safe_open(d / fname, framework="numpy") as f:
      for k in f.keys():
        sl = f.get_slice(k)
        n = int(np.prod(sl.get_shape())) * {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}[sl.get_dtype()]
        total += n
        largest = max(largest, n)
  return total, largest, len(files)


def same_tensors(src: Path, out: Path) -> bool:
  """Every tensor of `out` equals (bitwise) the one of the same name in `src`, one tensor at a time."""
  import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, which safetensors needs to return it
  from safetensors import safe_open

  def wmap(d):
    index = d / "model.safetensors.index.json"
    if index.exists():
      return {k: d / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(d / "model.safetensors", framework="numpy") as f:
      return {k: d / "model.safetensors" for k in f.keys()}

  a, b = wmap(src), wmap(out)
  if set(a) != set(b):
    return False
  for k in a:
    with safe_open(a[k], framework="numpy") as fa, safe_open(b[k], framework="numpy") as fb:
      x, y = fa.get_tensor(k), fb.get_tensor(k)
      if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x.view(np.uint16), y.view(np.uint16)):
        return False
  return True


# ---------------------------------------------------------------------------------------------------------------
# Child: one case (jax is imported only here)

def child(a) -> None:
  import jax
  import jax.numpy as jnp

  import jaxtune
  from jaxtune import mesh as mesh_lib

  devices = jax.devices()
  if len(devices) < a.devices:
    raise SystemExit(f"need {a.devices} devices, have {len(devices)}")
  mesh = mesh_lib.make_mesh(1, a.devices, 1, devices=devices[:a.devices])
  jax.block_until_ready(jax.device_put(np.zeros(4, np.float32)))  # backend start-up outside the figures
  # load_pretrained's first call imports transformers (and with it torch) to normalise config.json: a one-time
  # start-up cost (seconds, a few hundred MB of RSS) that is not checkpoint I/O; timed here, outside the figures.
  from jaxtune.models import ModelConfig
  t = time.perf_counter()
  ModelConfig.from_hf(json.loads((Path(a.ckpt) / "config.json").read_text()))
  config_import_s = time.perf_counter() - t

  def load():
    m = jaxtune.load_pretrained(a.ckpt, mesh=mesh, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    jax.block_until_ready(jax.tree.leaves(_params(m)))
    return m

  model, load_s, lbase, lpeak, lend = measure(load)
  params = _params(model)
  resident = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
  logical = sum(x.nbytes for x in jax.tree.leaves(params))
  dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(params)})

  _, export_s, ebase, epeak, eend = measure(lambda: jaxtune.save_pretrained(model, a.out, dtype=jnp.bfloat16))
  print("CHILD " + json.dumps({
      "devices": a.devices, "config_import_s": config_import_s, "load_s": load_s, "export_s": export_s, "param_dtypes": dtypes,
      "params_resident": resident, "params_logical": logical,
      "load_base": lbase, "load_peak": lpeak, "load_end": lend,
      "export_base": ebase, "export_peak": epeak, "export_end": eend}), flush=True)


def _params(model):
  from flax import nnx
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ---------------------------------------------------------------------------------------------------------------
# Parent

def run_case(a, ckpt: Path, devices: int, total: int, largest: int) -> dict | None:
  out = Path(a.work) / f"export-{devices}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--ckpt", str(ckpt), "--out", str(out),
         "--devices", str(devices)]
  p = subprocess.run(cmd, env=env, capture_output=True, text=True)
  child_lines = [ln for ln in p.stdout.splitlines() if ln.startswith("CHILD ")]
  if p.returncode != 0 or not child_lines:
    print(f"child for {devices} device(s) failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}",
          flush=True)
    return None
  r = json.loads(child_lines[-1][len("CHILD "):])
  exact = same_tensors(ckpt, out) if a.verify else None
  if not a.keep:
    shutil.rmtree(out, ignore_errors=True)

  load_inc = r["load_peak"]["VmRSS"] - r["load_base"]["VmRSS"]
  export_inc = r["export_peak"]["VmRSS"] - r["export_base"]["VmRSS"]
  load_over = load_inc - r["params_resident"]
  target = largest + 0.5 * GB
  res = {
      "devices": devices,
      "load_s": r["load_s"], "load_gbps": total / GB / r["load_s"],
      "load_peak_rss_increase_gb": load_inc / GB, "load_overhead_gb": load_over / GB,
      "export_s": r["export_s"], "export_gbps": total / GB / r["export_s"],
      "export_peak_rss_increase_gb": export_inc / GB, "export_overhead_gb": export_inc / GB,
      "params_resident_gb": r["params_resident"] / GB, "largest_tensor_gb": largest / GB,
      "target_overhead_gb": target / GB,
      "meets_target": int(load_over <= target and export_inc <= target),
      "exact": -1 if exact is None else int(exact),
  }
  gb = lambda x: f"{x / GB:.3f}"  # noqa: E731
  print(f"[{devices} device(s)] params {r['param_dtypes']} resident {gb(r['params_resident'])} GB "
        f"(logical {gb(r['params_logical'])} GB); first config parse (transformers import, not timed below) "
        f"{r['config_import_s']:.2f} s", flush=True)
  for op in ("load", "export"):
    b, pk, e = r[f"{op}_base"], r[f"{op}_peak"], r[f"{op}_end"]
    print(f"[{devices} device(s)] {op}: {r[op + '_s']:.2f} s; RSS base {gb(b['VmRSS'])} peak {gb(pk['VmRSS'])} "
          f"end {gb(e['VmRSS'])} GB; sampled peak anon +{gb(pk['RssAnon'] - b['RssAnon'])} "
          f"file +{gb(pk['RssFile'] - b['RssFile'])} GB", flush=True)
  print("RESULT weights_io " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in res.items()), flush=True)
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--hidden", type=int, default=2048)
  p.add_argument("--layers", type=int, default=16)
  p.add_argument("--intermediate", type=int, default=5632)
  p.add_argument("--heads", type=int, default=16)
  p.add_argument("--kv-heads", type=int, default=16)
  p.add_argument("--max-shard-gb", type=float, default=1.0, help="checkpoint shard size (HF-style split)")
  p.add_argument("--devices", default="1,8", help="cases: CPU device counts (mesh fsdp=N)")
  p.add_argument("--ckpt-dir", default=None, help="checkpoint dir: reused if it holds one, else written there")
  p.add_argument("--work", default=None, help="scratch dir for the checkpoint and exports (default: a temp dir)")
  p.add_argument("--keep", action="store_true", help="keep the checkpoint and exports")
  p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the bitwise export check")
  # child mode
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--ckpt", help=argparse.SUPPRESS)
  p.add_argument("--out", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.child:
    a.devices = int(a.devices)
    return child(a)

  own_work = a.work is None
  a.work = a.work or tempfile.mkdtemp(prefix="jaxtune-weights-io-")
  ckpt = Path(a.ckpt_dir) if a.ckpt_dir else Path(a.work) / "ckpt"
  try:
    if not (ckpt / "model.safetensors.index.json").exists():
      t = time.perf_counter()
      write_checkpoint(ckpt, hf_config(a), int(a.max_shard_gb * GB))
      print(f"wrote {ckpt} in {time.perf_counter() - t:.1f} s", flush=True)
    total, largest, nfiles = checkpoint_stats(ckpt)
    print(f"checkpoint {total / GB:.3f} GB bf16 in {nfiles} files, largest tensor {largest / GB:.3f} GB", flush=True)
    results = [run_case(a, ckpt, int(n), total, largest) for n in a.devices.split(",")]
  finally:
    if own_work and not a.keep:
      shutil.rmtree(a.work, ignore_errors=True)
  if any(r is None for r in results):
    sys.exit(1)


if __name__ == "__main__":
  main()
