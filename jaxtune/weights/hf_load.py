"""Load an HF safetensors checkpoint straight into (sharded) NNX parameters.

The model is built abstractly (`nnx.eval_shape`), then each parameter is read
from its safetensors file one tensor at a time, shape-checked, transformed
(kernels transposed) and placed into its sharding with
`jax.make_array_from_callback`, which reads only the slices this process's
devices hold. Host memory beyond the loaded params stays bounded by a few
copies of one tensor: each file is mapped only while one of its tensors is read.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, Sharding, SingleDeviceSharding
from safetensors import safe_open

from jaxtune import log as log_lib
from jaxtune.mesh import sharding_for, variable_axes
from jaxtune.models import CausalLM, ModelConfig, build_model, quant
from jaxtune.weights import tables
from jaxtune.errors import CheckpointError, ConfigError, MissingPathError

HUB_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.jinja", "*.txt"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")




def resolve_model_dir(path: str | Path, *, what: str = "model.path") -> Path:
  """A local directory as is; otherwise an HF hub id fetched with snapshot_download. `what` names the
  setting in errors (model.path, distill.teacher, --model)."""
  s = str(path)
  if not s.strip():
    raise ConfigError(f"{what} is empty: set it to a Hugging Face model directory or hub id")
  p = Path(path).expanduser()
  if p.is_dir():
    return p
  if p.exists():
    raise MissingPathError(f"{what} {s!r} is a file, not a model directory")
  if s.startswith((".", "/", "~")) or s.count("/") > 1:
    raise MissingPathError(f"{what} {s!r} does not exist")
  from huggingface_hub import snapshot_download
  try:
    return Path(snapshot_download(s, allow_patterns=HUB_PATTERNS))
  except Exception as e:  # noqa: BLE001 - re-raised with the id that failed
    first = (str(e).strip().splitlines() or [""])[0]
    raise MissingPathError(f"{what} {s!r} is not a local directory and could not be fetched from the hub: "
                           f"{type(e).__name__}: {first}") from e


def read_hf_config(d: Path) -> dict[str, Any]:
  """config.json of a model dir as a dict; a missing or unreadable one is a CheckpointError naming the file
  (and line)."""
  f = Path(d) / "config.json"
  if not f.is_file():
    hint = (" (it is a jaxtune run dir: use `jaxtune export` to make a model directory of it)"
            if (Path(d) / "checkpoints").is_dir() else "")
    raise CheckpointError(f"{d} has no config.json: not a Hugging Face model directory{hint}")
  try:
    cfg = json.loads(f.read_bytes().decode("utf-8-sig"))
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{f}:{e.lineno}: not valid JSON ({e.msg})") from None
  except UnicodeDecodeError as e:
    raise CheckpointError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not isinstance(cfg, dict):
    raise CheckpointError(f"{f}: a config.json holds a JSON object, got {type(cfg).__name__}")
  if "jaxtune_version" in cfg:
    raise CheckpointError(f"{d} is a jaxtune run dir, not a model directory: make one with `jaxtune export --run {d} "
                          "--out DIR` (jaxtune generate takes the run dir itself)")
  return cfg


def model_config(hf_config: dict[str, Any], where: str) -> ModelConfig:
  """ModelConfig.from_hf, its errors (an unsupported architecture, a field out of range) naming `where`."""
  try:
    return ModelConfig.from_hf(hf_config)
  except CheckpointError as e:
    raise CheckpointError(f"{where}: {e}") from None
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise CheckpointError(f"{where}: unsupported model config: {type(e).__name__}: {e}") from None


def _safetensors_error(file: Path, e: Exception) -> CheckpointError:
  first = (str(e).strip().splitlines() or [""])[0]
  return CheckpointError(f"{file}: not a readable safetensors file ({first}); the file is truncated or damaged: "
                         "download or copy it again")


def _safe_open(file: Path):
  if not file.is_file():
    raise MissingPathError(f"{file} does not exist (named by {file.parent / 'model.safetensors.index.json'})")
  try:
    return safe_open(file, framework="numpy")
  except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, naming no file
    raise _safetensors_error(file, e) from None


def weight_map(d: Path) -> dict[str, Path]:
  """HF tensor name -> safetensors file, from the index or the single file."""
  index = d / "model.safetensors.index.json"
  if index.exists():
    try:
      wm = json.loads(index.read_bytes().decode("utf-8-sig"))["weight_map"]
      if not isinstance(wm, dict):
        raise TypeError(f"weight_map is a {type(wm).__name__}")
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{index}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (KeyError, TypeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index (no weight_map object: {e})") from None
    return {k: d / f for k, f in wm.items()}
  single = d / "model.safetensors"
  if single.exists():
    with _safe_open(single) as f:
      return {k: single for k in f.keys()}
  pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
  if pickles:
    raise CheckpointError(
        f"{d} holds only pickle checkpoints ({', '.join(pickles[:4])}); pickle checkpoints are not loaded "
        "because unpickling can run arbitrary code. Convert them to safetensors first (e.g. load with "
        "transformers and call save_pretrained(dir, safe_serialization=True)).")
  raise CheckpointError(f"{d} has no model.safetensors or model.safetensors.index.json")


def check_model_dir(d: Path) -> ModelConfig:
  """What can be checked of a model dir without reading tensors, in well under a second: config.json
  readable and supported, weight files present (each safetensors header readable)."""
  cfg = model_config(read_hf_config(d), str(Path(d) / "config.json"))
  files = sorted(set(weight_map(Path(d)).values()))
  for file in files:
    with _safe_open(file):
      pass
  return cfg


def check_keys(expected: set[str], available: set[str], *, tied: bool) -> None:
  missing = sorted(expected - available)
  unexpected = sorted(k for k in available - expected
                      if not tables.is_ignored(k) and not (tied and k == tables.TIED_HEAD_KEY))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"missing tensors: {missing[:10]}" + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    if unexpected:
      parts.append(f"unexpected tensors: {unexpected[:10]}"
                   + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    raise CheckpointError("checkpoint does not match the model: " + "; ".join(parts))


TILE_ROWS, TILE_COLS = 1024, 16  # output rows x columns per block of a transposing copy


def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
  """dst[...] = src (casting as numpy does). A transposed 2-D view is copied in
  tiles: numpy's plain copy walks the output row by row, and for a tall source
  each output row touches one cache line of every source row (measured 4x slower
  on a [32000, 2048] bf16 embedding here)."""
  if src.ndim == 2 and src.size >= 1 << 16 and not src.flags.c_contiguous and src.T.flags.c_contiguous:
    rows, cols = src.shape
    for i in range(0, rows, TILE_ROWS):
      for j in range(0, cols, TILE_COLS):
        dst[i:i + TILE_ROWS, j:j + TILE_COLS] = src[i:i + TILE_ROWS, j:j + TILE_COLS]
  else:
    dst[...] = src


def contiguous(a: np.ndarray, dtype: Any) -> np.ndarray:
  """`a` as a C-contiguous array of `dtype`: `a` itself when it already is, else one copy."""
  dtype = np.dtype(dtype)
  if a.dtype == dtype and a.flags.c_contiguous:
    return a
  out = np.empty(a.shape, dtype)
  copy_into(out, a)
  return out


def read_sharded(slice_obj: Any, transform: tables.Transform, shape: tuple[int, ...], sharding: Sharding,
                 dtype: Any) -> jax.Array:
  """A global array of `shape` whose addressable shards are read slice by slice
  (one read, at most one transposing/casting copy per distinct slice)."""
  cache: dict[tuple, np.ndarray] = {}  # shards replicated over several local devices are read once

  def cb(index: tuple[slice, ...]) -> np.ndarray:
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      hf_index = transform.hf_index(index) if index else ()
      part = np.asarray(slice_obj[hf_index] if hf_index else slice_obj[:])
      cache[key] = contiguous(transform.to_flax(part), dtype)
    return cache[key]

  return jax.make_array_from_callback(shape, sharding, cb)


def _checked_slice(f, file: Path, key: str, layer_shape: tuple[int, ...], transform: tables.Transform, what: str):
  """The safetensors slice of `key`, checked against the parameter (or per-layer slice) shape it fills."""
  try:
    sl = f.get_slice(key)
  except Exception as e:  # noqa: BLE001 - a stale index names a tensor the file lacks
    raise CheckpointError(f"tensor {key!r} is listed for {file.name} but cannot be read there: {e}") from e
  want, got = transform.hf_shape(layer_shape), tuple(sl.get_shape())
  if want != got:
    raise CheckpointError(f"tensor {key!r} in {file.name} has shape {got}, expected {want} "
                          f"(for parameter {what} of shape {layer_shape})")
  if sl.get_dtype() not in ("F64", "F32", "F16", "BF16"):
    raise CheckpointError(f"tensor {key!r} in {file.name} has dtype {sl.get_dtype()}, expected a float dtype")
  return sl


def read_tensor(file: Path, key: str, shape: tuple[int, ...], path: tuple, transform: tables.Transform,
                sharding: Sharding, param_dtype: Any) -> jax.Array:
  """One parameter from its safetensors file. The file is opened for this tensor
  only: safetensors memory-maps it, and every page read stays in this process's
  RSS until the map is closed, so a handle held across tensors would grow RSS by
  the whole shard file."""
  with _safe_open(file) as f:
    sl = _checked_slice(f, file, key, shape, transform, tables.dotted(path))
    try:
      return read_sharded(sl, transform, shape, sharding, param_dtype)
    except TypeError as e:  # safetensors < 0.8 cannot give bfloat16 tensors to numpy
      raise CheckpointError(f"tensor {key!r} ({sl.get_dtype()}) could not be read with numpy: {e}; "
                            "bfloat16 checkpoints need safetensors >= 0.8") from e
    except (OSError, ValueError, BufferError) as e:  # bytes missing past a truncated file's end
      raise CheckpointError(f"{file}: tensor {key!r} cannot be read ({type(e).__name__}: {e}); the file is "
                            "truncated or damaged: download or copy it again") from e


def _slice_len(s: slice, n: int) -> int:
  return len(range(*s.indices(n)))


def read_stacked(files: dict[str, Path], keys: list[tuple[str, tables.Transform]], shape: tuple[int, ...],
                 path: tuple, sharding: Sharding, param_dtype: Any) -> jax.Array:
  """A scanned model's stacked parameter [L, ...] from its L per-layer HF tensors: each addressable shard is
  filled layer by layer (one tensor's slice read at a time, its file open only meanwhile), so host memory
  holds the stacked target's shard plus one slice."""
  layer_shape = shape[1:]
  cache: dict[tuple, np.ndarray] = {}  # shards replicated over several local devices are read once

  def cb(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    cache_key = tuple((s.start, s.stop, s.step) for s in index)
    if cache_key not in cache:
      layers, rest = range(*index[0].indices(shape[0])), index[1:]
      out = np.empty((len(layers),) + tuple(_slice_len(s, n) for s, n in zip(rest, layer_shape)), param_dtype)
      for j, layer in enumerate(layers):
        key, transform = keys[layer]
        with _safe_open(files[key]) as f:
          sl = _checked_slice(f, files[key], key, layer_shape, transform, f"{tables.dotted(path)}[{layer}]")
          hf_index = transform.hf_index(rest)
          copy_into(out[j], transform.to_flax(np.asarray(sl[hf_index] if hf_index else sl[:])))
      cache[cache_key] = out
    return cache[cache_key]

  return jax.make_array_from_callback(shape, sharding, cb)


def load_state(cfg: ModelConfig, abstract_state: nnx.State, d: Path, *,
               placement: Callable[[str, nnx.Variable, tuple[int, ...]], Sharding], param_dtype: Any) -> nnx.State:
  """Fills an abstract params state from the checkpoint in `d` (a scanned model's stacked decoder-block
  parameters from their per-layer tensors; a quantized kernel's codes and scales from its float tensor, read
  sharded and quantized on its devices before the next tensor is read)."""
  files = weight_map(d)
  flat = dict(nnx.to_flat_state(abstract_state))
  plan = []  # (path, var, [(hf key, transform)] per layer, stacked?, quantized?)
  for path, var in flat.items():
    if path[-1] == "kernel_scale":
      continue  # filled with its kernel_q
    quantized = path[-1] == "kernel_q"
    kernel_path = path[:-1] + ("kernel",) if quantized else path
    layers = tables.stacked_layer_paths(kernel_path, cfg.num_layers)
    keys = [tables.hf_key(cfg.family, p) for p in (layers or [kernel_path])]
    plan.append((path, var, keys, layers is not None, quantized))
  check_keys({key for _, _, keys, _, _ in plan for key, _ in keys}, set(files), tied=cfg.tie_word_embeddings)
  def float_shape(var, quantized: bool) -> tuple[int, ...]:  # the float tensor a parameter is read as
    shape = tuple(var.get_value().shape)
    nf4 = quantized and var.get_value().dtype == jnp.uint8
    return shape[:-2] + (2 * shape[-2], shape[-1]) if nf4 else shape  # nf4 packs two codes a byte

  itemsize = np.dtype(param_dtype).itemsize
  n_tensors = sum(len(keys) for _, _, keys, _, _ in plan)
  nbytes = lambda shape: int(np.prod(shape, dtype=np.int64)) * itemsize  # noqa: E731
  bar = log_lib.progress(total=sum(nbytes(float_shape(var, q)) for _, var, _, _, q in plan),
                         desc=f"loading weights from {d}", unit="B", scale=True)
  out, done = [], 0
  for path, var, keys, stacked, quantized in plan:
    shape = float_shape(var, quantized)
    fmt = ("nf4" if var.get_value().dtype == jnp.uint8 else "int8") if quantized else None
    sharding = placement(tables.dotted(path), var, shape)
    dtype = jnp.float32 if quantized else param_dtype
    if stacked:
      array = read_stacked(files, keys, shape, path, sharding, dtype)
    else:
      (key, transform), = keys
      array = read_tensor(files[key], key, shape, path, transform, sharding, dtype)
    done += len(keys)
    bar.set_postfix(tensors=f"{done}/{n_tensors}")
    bar.update(nbytes(shape))
    if not quantized:
      out.append((path, var.replace(array)))
      continue
    scale_path = path[:-1] + ("kernel_scale",)
    scale_var = flat[scale_path]
    code_sh = placement(tables.dotted(path), var, tuple(var.get_value().shape))
    scale_sh = placement(tables.dotted(scale_path), scale_var, tuple(scale_var.get_value().shape))
    codes, scale = jax.jit(functools.partial(quant.quantize, fmt=fmt), out_shardings=(code_sh, scale_sh))(array)
    del array
    out += [(path, var.replace(codes)), (scale_path, scale_var.replace(scale))]
  bar.close()
  return nnx.from_flat_state(out)


def load_pretrained(path: str | Path, *, dtype: Any = None, param_dtype: Any = None, mesh: Mesh | None = None,
                    remat: str = "none", attention_impl: str | None = None,
                    scan_layers: bool | None = None, quantize: str | None = None) -> CausalLM:
  """An HF checkpoint dir (or hub id) as a CausalLM; params sharded over `mesh`
  by their logical axes (one device when mesh is None). Params are stored in
  `param_dtype` (default float32) and computed in `dtype` (default float32).
  `scan_layers` stacks the decoder blocks and scans them (None/False: unrolled); `quantize` ("int8" /
  "nf4") stores the decoder blocks' projections quantized, each quantized as it is read."""
  d = resolve_model_dir(path)
  hf_config = read_hf_config(d)
  cfg = model_config(hf_config, str(d / "config.json"))
  dtype = jnp.dtype(jnp.float32 if dtype is None else dtype)  # (a np.dtype is falsy: no `or` here)
  param_dtype = jnp.dtype(jnp.float32 if param_dtype is None else param_dtype)
  abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                                                remat=remat, attention_impl=attention_impl, hf_config=hf_config,
                                                scan_layers=bool(scan_layers), quantize=quantize))
  graphdef, abstract_state = nnx.split(abstract)
  if mesh is None:
    one = SingleDeviceSharding(jax.local_devices()[0])
    placement = lambda name, var, shape: one  # noqa: E731
  else:
    placement = lambda name, var, shape: sharding_for(variable_axes(var), shape, mesh, what=name)  # noqa: E731
  state = load_state(cfg, abstract_state, d, placement=placement, param_dtype=param_dtype)
  return nnx.merge(graphdef, state)
