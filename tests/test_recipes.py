"""The real-hardware recipes in configs/, checked on 8 fake CPU devices with no weights.

A recipe is a configs/*.py module that names its hardware with module constants
`TOPOLOGY` (e.g. "v5p-32"), `ACCELERATOR` (a key of `HBM_BYTES`) and `CHIPS`.
For each one:

- the model is built abstractly (`nnx.eval_shape`) from the preset config.json
  of `model.path` (jaxtune.models.presets), under a mesh with the recipe's axis
  proportions scaled down to 8 devices, and `jaxtune.mesh.state_shardings`
  places it: every parameter of >= 1M elements must be split over `fsdp` on the
  dimension the rules map to `fsdp`, with no rule dropped for divisibility;
- `jaxtune plan` (jaxtune/plan.py) on the recipe, with the devices and HBM of
  its TOPOLOGY, gives the per-chip bytes of parameters, optimizer state and
  gradients (exact, on an abstract mesh of the recipe's real size) plus
  activations (an estimate: the real sizes are too large to compile here); it
  must fit the chip's HBM with 10% to spare (exit status 0);
- the global batch must split over grad_accum micro-steps and then over the
  data x fsdp devices.

`pytest tests/test_recipes.py -s` prints the per-chip table.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from jaxtune import cli
from jaxtune import mesh as mesh_lib
from jaxtune.config import Config, OptimCfg
from jaxtune.models import ModelConfig, build_model
from jaxtune.models.presets import HF_CONFIGS, preset_model_config
from jaxtune.plan import HBM_BYTES
from jaxtune.train.optim import make_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LARGE = 1 << 20  # parameters with at least this many elements must be FSDP-sharded
TEST_DEVICES = 8
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
LORA_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
                "up_proj": "up", "down_proj": "down"}


def _load(path: Path):
  spec = importlib.util.spec_from_file_location(f"recipe_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def recipe_paths() -> list[Path]:
  return [p for p in sorted(CONFIGS.glob("*.py")) if hasattr(_load(p), "CHIPS")]


RECIPES = recipe_paths()


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  module: object
  cfg: Config
  sizes: tuple[int, ...]  # mesh sizes in jaxtune.mesh.AXES order (data, fsdp, context, tensor) at full scale

  @property
  def axes(self) -> dict[str, int]:
    return dict(zip(mesh_lib.AXES, self.sizes))

  @property
  def hbm(self) -> float:
    return HBM_BYTES[self.module.ACCELERATOR]


@functools.lru_cache(maxsize=None)
def recipe(name: str) -> Recipe:
  module = _load(CONFIGS / f"{name}.py")
  cfg = Config.from_dict(module.get_config())
  sizes = [getattr(cfg.mesh, a) for a in mesh_lib.AXES]
  if -1 in sizes:
    sizes[sizes.index(-1)] = module.CHIPS // math.prod(s for s in sizes if s != -1)
  return Recipe(name, module, cfg, tuple(sizes))


def scaled_sizes(real: tuple[int, ...], n: int = TEST_DEVICES) -> tuple[int, ...]:
  """`real` mesh sizes shrunk to `n` devices, keeping which axes are > 1: doubles,
  `n`'s factors at a time, the axis furthest below its real size."""
  sizes = [1] * len(real)
  while math.prod(sizes) < n:
    open_axes = [i for i, r in enumerate(real) if sizes[i] * 2 <= r]
    if not open_axes:
      break
    i = max(open_axes, key=lambda i: (real[i] / sizes[i], -sizes[i]))
    sizes[i] *= 2
  return tuple(sizes)


class _Keys:
  """Stands in for nnx.Rngs under eval_shape: keys do not change shapes, and a
  fixed key skips jax 0.10's per-update tracer bookkeeping on the Rngs counter
  (quadratic in model size: 13 s instead of 2 s for the 70B model)."""

  def params(self):
    return jax.random.key(0)


@functools.lru_cache(maxsize=None)
def abstract_params(hub_id: str, dtype: str, param_dtype: str, remat: str, sizes: tuple[int, ...]):
  """({path: (ShapeDtypeStruct, logical axes)}, scaled mesh shardings {path: NamedSharding}, ModelConfig)."""
  mesh = mesh_lib.make_mesh(**dict(zip(mesh_lib.AXES, sizes)), devices=jax.devices()[:math.prod(sizes)])
  mcfg = preset_model_config(hub_id)
  with jax.set_mesh(mesh):
    model = nnx.eval_shape(lambda: build_model(mcfg, rngs=_Keys(), dtype=DTYPES[dtype],
                                               param_dtype=DTYPES[param_dtype], remat=remat))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  shardings = mesh_lib.state_shardings(params, mesh)
  is_var = lambda x: isinstance(x, nnx.Variable)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)[0]}
  flat_sh = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(shardings, is_leaf=is_var)[0]}
  out = {k: (jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype), mesh_lib.variable_axes(v))
         for k, v in flat.items()}
  return out, {k: v.get_value() for k, v in flat_sh.items()}, mcfg


def lora_adapters(params: dict, rank: int, targets: tuple[str, ...], param_dtype) -> dict:
  """The adapters LoRA adds to each targeted kernel [in, out]: A [in, r] and
  B [r, out], on logical axes (in, "lora") and ("lora", out)."""
  out = {}
  for path, (sds, axes) in params.items():
    m = re.search(r"\['(\w+)'\]\['kernel'\]$", path)
    module = m.group(1) if m else None
    if module in LORA_TARGETS and LORA_TARGETS[module] in targets:
      d_in, d_out = sds.shape
      out[path + "['lora_a']"] = (jax.ShapeDtypeStruct((d_in, rank), param_dtype), (axes[0], "lora"))
      out[path + "['lora_b']"] = (jax.ShapeDtypeStruct((rank, d_out), param_dtype), ("lora", axes[1]))
  return out


def full_mesh(sizes: tuple[int, ...]) -> AbstractMesh:
  return AbstractMesh(sizes, mesh_lib.AXES, axis_types=(AxisType.Auto,) * len(sizes))


def shard_bytes(sds: jax.ShapeDtypeStruct, sharding: NamedSharding) -> int:
  return math.prod(sharding.shard_shape(sds.shape)) * jnp.dtype(sds.dtype).itemsize


def fsdp_dims(axes) -> list[int]:
  """Dimensions whose logical axis the rules put on the fsdp mesh axis."""
  rules = [mesh_lib.RULES.get(a) if a is not None else None for a in axes]
  return [i for i, r in enumerate(rules) if r == "fsdp" or (isinstance(r, tuple) and "fsdp" in r)]


def check_fsdp(params: dict, shardings: dict[str, NamedSharding], mesh) -> None:
  """Every large parameter is split over fsdp where the rules say, and no rule was dropped."""
  for path, (sds, axes) in params.items():
    spec = tuple(shardings[path].spec) + (None,) * (len(sds.shape) - len(shardings[path].spec))
    wanted = tuple(mesh_lib.logical_to_spec(axes, mesh)) + (None,) * (len(sds.shape) - len(axes or ()))
    if math.prod(sds.shape) < LARGE:
      continue
    assert spec == wanted, f"{path} {sds.shape} axes {axes}: spec {spec}, the rules give {wanted} (not divisible?)"
    dims = fsdp_dims(axes)
    assert dims, f"{path} {sds.shape}: no logical axis of {axes} maps to fsdp"
    for i in dims:
      entry = spec[i] if isinstance(spec[i], tuple) else (spec[i],)
      assert "fsdp" in entry, f"{path} {sds.shape}: dim {i} ({axes[i]}) is not split over fsdp: {spec}"


NAMES = [p.stem for p in RECIPES]


def test_recipes_exist():
  assert len(NAMES) >= 6, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_recipe_contract(name):
  r = recipe(name)
  c, mod = r.cfg, r.module
  assert c.model.path in HF_CONFIGS, f"{name}: model.path {c.model.path!r} has no preset in jaxtune.models.presets"
  assert (c.model.dtype, c.model.param_dtype) == ("bfloat16", "float32")
  assert c.model.remat != "none"
  assert mod.ACCELERATOR in HBM_BYTES
  assert math.prod(r.sizes) == mod.CHIPS, f"{name}: mesh {r.sizes} does not use the {mod.CHIPS} chips of {mod.TOPOLOGY}"
  assert c.run.dir != "runs/default" and c.data.train
  doc = mod.__doc__ or ""
  assert mod.TOPOLOGY in doc and f"configs/{name}.py" in doc and "estimate" in doc


@pytest.mark.parametrize("name", NAMES)
def test_batch_splits_over_data_and_fsdp(name):
  r = recipe(name)
  data, fsdp = r.axes["data"], r.axes["fsdp"]
  b, k = r.cfg.train.batch_size, r.cfg.train.grad_accum
  assert b % k == 0, f"{name}: batch {b} is not divisible by grad_accum {k}"
  assert (b // k) % (data * fsdp) == 0, f"{name}: micro-batch {b // k} does not split over data*fsdp={data * fsdp}"


@pytest.mark.parametrize("name", NAMES)
def test_large_params_are_fsdp_sharded(name):
  r = recipe(name)
  c = r.cfg
  sizes = scaled_sizes(r.sizes)
  assert [s > 1 for s in sizes] == [s > 1 for s in r.sizes], (sizes, r.sizes)
  params, shardings, _ = abstract_params(c.model.path, c.model.dtype, c.model.param_dtype, c.model.remat, sizes)
  mesh = next(iter(shardings.values())).mesh
  assert dict(mesh.shape) == dict(zip(mesh_lib.AXES, sizes))
  check_fsdp(params, shardings, mesh)  # the 8-device mesh the test builds
  full = full_mesh(r.sizes)  # the recipe's real mesh, abstractly
  check_fsdp(params, {k: mesh_lib.sharding_for(a, s.shape, full) for k, (s, a) in params.items()}, full)
  if c.lora.rank > 0:  # adapters are small; frozen base weights still shard
    adapters = lora_adapters(params, c.lora.rank, c.lora.targets, jnp.float32)
    assert len(adapters) == 2 * len(c.lora.targets) * preset_model_config(c.model.path).num_layers


@pytest.mark.parametrize("name", NAMES)
def test_plan_fits_the_recipes_topology(name, capsys):
  """`jaxtune plan` on the recipe, with the devices and HBM of its TOPOLOGY: it fits (exit 0)."""
  status = cli.main(["plan", "--config", str(CONFIGS / f"{name}.py"), "--json"])
  out = json.loads(capsys.readouterr().out)
  r = recipe(name)
  m = out["per_device_bytes"]
  gb = lambda x: f"{x / 1e9:5.1f}"
  print(f"\n{name:28s} {r.module.TOPOLOGY:8s} mesh {r.sizes}: params {gb(m['params'])} + optimizer "
        f"{gb(m['optimizer'])} + grads {gb(m['grads'])} + activations~{gb(m['activations'])} = {gb(m['total'])} GB "
        f"of {gb(r.hbm)} GB ({out['source']})")
  assert out["devices"] == r.module.CHIPS and out["topology"] == r.module.TOPOLOGY and out["hbm_bytes"] == r.hbm
  assert tuple(out["mesh"].values()) == r.sizes
  assert m["params"] + m["optimizer"] + m["grads"] < 0.5 * r.hbm
  assert status == 0 and out["fits"], f"{name}: about {m['total'] / 1e9:.1f} GB per chip of {r.hbm / 1e9:.0f} GB"


def test_scaled_sizes():
  assert scaled_sizes((1, 16, 1)) == (1, 8, 1)
  assert scaled_sizes((1, 16, 4)) == (1, 4, 2)
  assert scaled_sizes((2, 8, 1)) == (2, 4, 1)
  assert scaled_sizes((1, 8, 1)) == (1, 8, 1)


def test_presets_match_published_parameter_counts():
  counts = {"meta-llama/Llama-3.2-1B-Instruct": 1_235_814_400, "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
            "meta-llama/Llama-3.1-70B-Instruct": 70_553_706_496, "Qwen/Qwen3-8B": 8_190_735_360}
  for hub_id, n in counts.items():
    assert preset_model_config(hub_id).num_params == n, hub_id
  gemma = preset_model_config("google/gemma-3-12b-it")
  assert gemma.layer_types.count("full_attention") == 8 and gemma.sliding_window == 1024
  assert gemma.rope.rope_type == "linear" and gemma.rope_local.theta == 10000.0


def test_moments_are_placed_like_params():
  """What the memory figures assume: AdamW moments sharded like their parameters."""
  from jaxtune.train.state import init_state
  cfg = ModelConfig.for_family("llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=1,
                               num_heads=4, num_kv_heads=2)
  mesh = mesh_lib.make_mesh(1, 8, 1)
  with jax.set_mesh(mesh):
    abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    sh = mesh_lib.state_shardings(abs_state, mesh)
    create = jax.jit(lambda: nnx.split(build_model(cfg, rngs=nnx.Rngs(0)))[1], out_shardings=sh)
    model = nnx.merge(graphdef, create())
    tx, _ = make_optimizer(OptimCfg(weight_decay=0.1), 10)
    _, state = init_state(model, tx)
  flat = lambda tree: [(jax.tree_util.keystr(k), x) for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  param_specs = {path: x.sharding.spec for path, x in flat(state.params)}
  assert any("fsdp" in tuple(s) for s in param_specs.values())
  for path, x in flat(state.opt_state):  # mu[...] and nu[...] end with their parameter's path
    match = [p for p in param_specs if path.endswith(p)]
    if match:
      assert x.sharding.spec == param_specs[match[0]], f"{path}: {x.sharding.spec}, its parameter {param_specs[match[0]]}"
