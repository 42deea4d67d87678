"""Write NNX parameters as an HF checkpoint directory, one tensor at a time.

A scanned model's stacked decoder-block parameters are written as their per-layer
tensors (one layer sliced out on its devices at a time), so the files are the same
in both modes. Shard layout is planned from shapes alone, so each safetensors file is written
header first and then streamed tensor by tensor (each assembled on the host from
its device shards straight into HF layout and dtype, written, dropped): host
memory beyond the params stays bounded by about one tensor. With several
processes every process joins the gathers, only process 0 writes, and all of
them wait for it before returning.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune import log as log_lib
from jaxtune.models import CausalLM, ModelConfig, build_model
from jaxtune.weights import tables
from jaxtune.weights.hf_load import contiguous, copy_into

ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
TOKENIZER_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "*.model", "*.jinja", "chat_template.json")


def flat_params(params: Any) -> list[tuple[tuple, Any]]:
  """(path, array) pairs of an nnx.State (Variables or raw leaves) or a nested dict."""
  if isinstance(params, nnx.State):
    pairs = list(nnx.to_flat_state(params))
  else:
    leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    pairs = [(tuple(_key(k) for k in kp), v) for kp, v in leaves]
  return [(tuple(p), v.get_value() if isinstance(v, nnx.Variable) else v) for p, v in pairs]


def _key(k) -> Any:
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def _shard_to_host(a: jax.Array) -> np.ndarray:
  """Host value of a single-device array, leaving no host copy cached on it
  (`np.asarray` keeps one on the array whenever it had to copy, e.g. from a GPU;
  on CPU it is a view of the device buffer)."""
  had = getattr(a, "_npy_value", None) is not None
  out = np.asarray(a)
  if not had and getattr(a, "_npy_value", None) is not None:
    a._npy_value = None  # the copy now lives as long as `out`, not as long as the parameter
  return out


def hf_tensor(x: Any, transform: tables.Transform = tables.IDENTITY, dtype: Any = None) -> np.ndarray:
  """The full value of a parameter in HF layout (`transform.to_hf`), cast to
  `dtype`, C-contiguous, assembled on this host with one allocation of the
  tensor's size. A fully addressable jax.Array is copied shard by shard (one
  replica each) straight into place: `np.asarray` on a sharded array would cache
  a full host copy on the array, which then lives as long as the model. An array
  spread over several processes is all-gathered first (every process joins)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  dtype = np.dtype(x.dtype if dtype is None else dtype)
  if not isinstance(x, jax.Array) or x.ndim == 0:
    return contiguous(transform.to_hf(np.asarray(x)), dtype)
  out = np.empty(transform.hf_shape(x.shape), dtype)
  for shard in x.addressable_shards:
    if shard.replica_id == 0:
      copy_into(out[transform.hf_index(shard.index)], transform.to_hf(_shard_to_host(shard.data)))
  return out


def host_array(x: Any) -> np.ndarray:
  """The full value of a (possibly multi-process sharded) array on this host."""
  return hf_tensor(x)


def plan_shards(entries: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[int]]:
  """Greedy split of (name, nbytes) entries, in order, into shards of <= max bytes
  (a tensor bigger than the limit gets a shard of its own)."""
  shards: list[list[int]] = [[]]
  size = 0
  for i, (_, nbytes) in enumerate(entries):
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(i)
    size += nbytes
  return shards


def write_safetensors(file: Path | None, names: Sequence[str], shapes: Sequence[tuple[int, ...]], dtype: np.dtype,
                      arrays: Iterable[np.ndarray]) -> None:
  """Streams `arrays` (in `names` order) into one safetensors file; `file=None`
  only drains the iterator (processes other than 0 still join the gathers)."""
  itemsize = np.dtype(dtype).itemsize
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape in zip(names, shapes):
    n = int(np.prod(shape, dtype=np.int64)) * itemsize
    header[name] = {"dtype": ST_DTYPES[np.dtype(dtype).name], "shape": list(shape),
                    "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  # Each array is dropped before the next one is made (a plain `for ... in zip(...)` would still hold
  # the previous one then: two tensors at once when, say, lm_head and embed_tokens come in a row).
  if file is None:
    for a in arrays:
      del a
    return
  it = iter(arrays)
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name, shape in zip(names, shapes):
      a = next(it, None)
      if a is None or a.shape != tuple(shape) or a.dtype != dtype:
        got = "nothing" if a is None else f"{a.shape} {a.dtype}"
        raise ValueError(f"tensor {name!r}: got {got}, planned {tuple(shape)} {np.dtype(dtype)}")
      f.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)  # no copy: hf_tensor is contiguous
      del a
    if next(it, None) is not None:
      raise ValueError(f"more arrays than the {len(names)} planned tensors")


def export_config(cfg: ModelConfig, hf_config: dict | None, dtype_name: str) -> dict[str, Any]:
  """The source config.json with its fields kept (architecture fields corrected
  if they disagree with cfg) and its dtype updated; cfg.to_hf() from scratch."""
  if hf_config is None:
    out = cfg.to_hf()
  else:
    out = dict(hf_config)
    if ModelConfig.from_hf(out) != cfg:
      for stale in ("rope_scaling", "rope_theta", "rope_local_base_freq"):
        out.pop(stale, None)
      out.update(cfg.to_hf())
  out["dtype"] = dtype_name
  if "torch_dtype" in out:
    out["torch_dtype"] = dtype_name
  return out


def copy_side_files(source_dir: Path, out_dir: Path) -> list[str]:
  """generation_config.json and tokenizer files from the source checkpoint."""
  copied = []
  for pattern in ("generation_config.json",) + TOKENIZER_FILES:
    for p in sorted(source_dir.glob(pattern)):
      if p.is_file() and p.name != "config.json":
        shutil.copy2(p, out_dir / p.name)
        copied.append(p.name)
  return copied


def _param_paths(cfg: ModelConfig, scan_layers: bool) -> list[tuple]:
  """The parameter paths of a model of `cfg`, in its order."""
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0), scan_layers=scan_layers))
  return [tuple(p) for p, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))]


class _Layer:
  """Layer `i` of a stacked parameter [L, ...], taken (on its devices) only when it is written."""

  def __init__(self, stacked: Any, i: int):
    self.stacked, self.i = stacked, i
    self.shape, self.dtype = tuple(stacked.shape[1:]), stacked.dtype


def _value(x: Any) -> Any:
  return x.stacked[x.i] if isinstance(x, _Layer) else x


def save_state_pretrained(cfg: ModelConfig, hf_config: dict | None, params_state: Any, out_dir: str | Path, *,
                          tokenizer: Any = None, dtype: Any = None, source_dir: str | Path | None = None,
                          max_shard_bytes: int = 5 * 10**9) -> Path:
  """Writes params (an nnx.State or nested dict mirroring CausalLM) as an HF checkpoint dir."""
  out_dir = Path(out_dir)
  writer = jax.process_index() == 0
  pairs = flat_params(params_state)
  given = {tables.dotted(p): (p, v) for p, v in pairs}
  scanned = any(tables.stacked_layer_paths(p, cfg.num_layers) is not None for p, _ in pairs)
  expected = _param_paths(cfg, scanned)
  missing = sorted(set(map(tables.dotted, expected)) - set(given))
  extra = sorted(set(given) - set(map(tables.dotted, expected)))
  if missing or extra:
    raise ValueError(f"params do not match a {cfg.family} model: missing {missing[:10]}, unexpected {extra[:10]}")
  if dtype is None:
    dtype = np.result_type(*(v.dtype for _, v in pairs))
  dtype = np.dtype(jnp.dtype(dtype))
  if dtype.name not in ST_DTYPES:
    raise ValueError(f"export dtype {dtype} not in {sorted(ST_DTYPES)}")

  # (hf name, hf shape, value, transform), in an unrolled model's path order (a scanned model's stacked
  # parameters unstacked: the same files, tensor for tensor, in both modes)
  entries = []
  for path in (_param_paths(cfg, False) if scanned else expected):
    stacked = tables.stacked_path(path) if scanned else None
    value = given[tables.dotted(path)][1] if stacked is None else _Layer(given[tables.dotted(stacked[0])][1],
                                                                        stacked[1])
    key, transform = tables.hf_key(cfg.family, path)
    entries.append((key, transform.hf_shape(value.shape), value, transform))
  shards = plan_shards([(k, int(np.prod(s, dtype=np.int64)) * dtype.itemsize) for k, s, _, _ in entries],
                       max_shard_bytes)
  n = len(shards)
  file_names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  if writer:
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob("model.safetensors.index.json")):
      old.unlink()

  nbytes = [int(np.prod(s, dtype=np.int64)) * dtype.itemsize for _, s, _, _ in entries]
  bar = log_lib.progress(total=sum(nbytes), desc=f"exporting to {out_dir}", unit="B", scale=True)

  def tensor(i: int) -> np.ndarray:
    a = hf_tensor(_value(entries[i][2]), entries[i][3], dtype)  # a scanned model's layer: its slice
    bar.update(nbytes[i])
    bar.set_postfix(tensors=f"{i + 1}/{len(entries)}")
    return a

  for fname, idx in zip(file_names, shards):
    names = [entries[i][0] for i in idx]
    shapes = [entries[i][1] for i in idx]
    write_safetensors(out_dir / fname if writer else None, names, shapes, dtype, (tensor(i) for i in idx))
  bar.close()

  if writer:
    if n > 1:
      total = sum(int(np.prod(s, dtype=np.int64)) * dtype.itemsize for _, s, _, _ in entries)
      index = {"metadata": {"total_size": total},
               "weight_map": {entries[i][0]: f for f, idx in zip(file_names, shards) for i in idx}}
      (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config = export_config(cfg, hf_config, dtype.name)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    copied = copy_side_files(Path(source_dir), out_dir) if source_dir is not None else []
    if "generation_config.json" not in copied:
      gen = {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
      (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
      tokenizer.save_pretrained(str(out_dir))
  if jax.process_count() > 1:  # no process returns (and, say, reads the export) before process 0 has written it
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("jaxtune.save_pretrained")
  return out_dir


def save_pretrained(model: CausalLM, out_dir: str | Path, *, tokenizer: Any = None, dtype: Any = None,
                    source_dir: str | Path | None = None, max_shard_bytes: int = 5 * 10**9) -> Path:
  """Writes `model` as an HF checkpoint dir that transformers loads with the same logits."""
  return save_state_pretrained(model.config, model.hf_config, nnx.state(model, nnx.Param), out_dir,
                               tokenizer=tokenizer, dtype=dtype, source_dir=source_dir,
                               max_shard_bytes=max_shard_bytes)
