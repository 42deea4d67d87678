"""`jaxtune plan`: the per-device memory of a config's train step on a mesh, before launch.

The train state is built abstractly (`nnx.eval_shape`, no weights read, no arrays made) and
placed by the rules table on the config's mesh for N devices. Then one of two things:

- **compiled** (N fake CPU devices are available and the model is small enough to compile
  here): the real jitted train step (`jaxtune.train.step.jit_train_step`) is lowered and
  compiled ahead of time for that mesh, and XLA's `memory_analysis()` gives the per-device
  peak: arguments + outputs - donated aliases + temporaries. Parameters, optimizer state and
  gradients are the exact shard bytes of the state; activations/temporaries are the rest of
  the compiled peak.
- **estimate** (otherwise, e.g. 70B on 64 chips): parameters, optimizer state and gradients
  are still the exact shard bytes (on a `jax.sharding.AbstractMesh` of the real size);
  activations are an analytic estimate (`activation_estimate`), and the plan says so.

The plan fits when the total is at most `HEADROOM` of the HBM. When it does not, candidate
changes (fsdp, remat, loss_chunk, grad_accum, context, quantize, more devices) are derived
from the numbers and re-planned (screened analytically, then compiled when the plan was), and
the smallest step of each kind that fits is suggested.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from jaxtune import mesh as mesh_lib
from jaxtune.config import Config, compute_dtype, jnp_dtype
from jaxtune.errors import ConfigError, UsageError
from jaxtune.models import ModelConfig, build_model
from jaxtune.models.lora import add_lora
from jaxtune.train import objectives
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import TrainState, opt_state_shardings

HBM_BYTES = {"v5e": 16e9, "v5p": 95e9, "v6e": 32e9, "h100": 80e9, "h200": 141e9, "a100": 80e9}  # vendors' figures
HEADROOM = 0.9  # a plan fits when its total leaves 10% of HBM for fragmentation and what XLA adds on the chip
COMPILE_MAX_PARAMS = 2e9  # above this, compiling the step on the CPU takes too long: estimate instead
DPO_SEGMENTS = 16  # segment slots per row assumed for DPO's [rows, segments] fields (a few bytes per row)
GB = 1e9


@dataclasses.dataclass(frozen=True)
class Hardware:
  devices: int
  hbm: float  # bytes per device
  topology: str | None = None  # a recipe's TOPOLOGY, when it named one


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per device."""
  params: float  # every parameter the step holds: trained, frozen (a LoRA base, a live reference), quantized
  optimizer: float
  grads: float  # the trained params' gradients (and the accumulator beside them with grad_accum > 1)
  activations: float  # activations and XLA temporaries

  @property
  def total(self) -> float:
    return self.params + self.optimizer + self.grads + self.activations


@dataclasses.dataclass(frozen=True)
class Plan:
  mesh: dict[str, int]
  hardware: Hardware
  memory: Memory
  source: str  # "compiled" (XLA's memory analysis of the step) or "estimate" (analytic activations)
  suggestions: tuple[str, ...] = ()

  @property
  def budget(self) -> float:
    return HEADROOM * self.hardware.hbm

  @property
  def fits(self) -> bool:
    return self.memory.total <= self.budget

  def to_dict(self) -> dict[str, Any]:
    m = self.memory
    return {"fits": self.fits, "source": self.source, "devices": self.hardware.devices,
            "topology": self.hardware.topology, "mesh": self.mesh, "hbm_bytes": self.hardware.hbm,
            "budget_bytes": self.budget, "headroom": HEADROOM,
            "per_device_bytes": {"params": m.params, "optimizer": m.optimizer, "grads": m.grads,
                                 "activations": m.activations, "total": m.total},
            "suggestions": list(self.suggestions)}

  def text(self) -> str:
    m, gb = self.memory, lambda x: f"{x / GB:8.2f} GB"
    act = "activations+temporaries" if self.source == "compiled" else "activations (estimate)"
    where = f"{self.hardware.devices} devices" + (f" ({self.hardware.topology})" if self.hardware.topology else "")
    lines = [f"plan: {where}, mesh " + " ".join(f"{k}={v}" for k, v in self.mesh.items())
             + f"; {'compiled train step (XLA memory analysis)' if self.source == 'compiled' else 'analytic estimate'}",
             f"  {'params':>24}: {gb(m.params)}", f"  {'optimizer state':>24}: {gb(m.optimizer)}",
             f"  {'gradients':>24}: {gb(m.grads)}", f"  {act:>24}: {gb(m.activations)}",
             f"  {'total per device':>24}: {gb(m.total)} of {self.hardware.hbm / GB:.2f} GB HBM "
             f"({100 * m.total / self.hardware.hbm:.0f}%; fits below {HEADROOM:.0%})"]
    lines += [f"  try: {s}" for s in self.suggestions]
    return "\n".join(lines)

  def verdict(self) -> str:
    """One line: fits, or does not and the first suggestion."""
    head = (f"{self.memory.total / GB:.2f} GB per device of {self.hardware.hbm / GB:.2f} GB "
            f"({'compiled' if self.source == 'compiled' else 'analytic estimate'})")
    if self.fits:
      return f"fits: {head}"
    return f"does not fit: {head}; " + (f"try {self.suggestions[0]}" if self.suggestions else "no single change "
                                        "found: more devices or a smaller model")


# -- inputs ------------------------------------------------------------------------------------------------


def model_config(path: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, HF config dict) of `model.path` from its config.json alone (no weights are read): a local
  directory, or a hub id with a preset in jaxtune.models.presets (nothing is downloaded)."""
  from jaxtune.models.presets import HF_CONFIGS, hf_config
  d = Path(path).expanduser()
  if (d / "config.json").is_file():
    hf = json.loads((d / "config.json").read_text())
  elif path in HF_CONFIGS:
    hf = hf_config(path)
  else:
    raise ConfigError(f"config key 'model.path': {path!r} is neither a directory with a config.json nor "
                      f"a hub id with a preset in jaxtune.models.presets ({', '.join(sorted(HF_CONFIGS))})")
  return ModelConfig.from_hf(hf), hf


def hardware(module: Any, devices: str | int | None, hbm_gb: float | None) -> Hardware:
  """Devices and HBM per device: the flags, else the recipe's TOPOLOGY constants (`CHIPS`, `ACCELERATOR`)."""
  n = getattr(module, "CHIPS", None)
  if devices is not None:
    try:
      n = int(devices)
    except ValueError:
      n = 0
    if n < 1:
      raise UsageError(f"--devices {devices!r}: need a whole number of devices >= 1")
  if n is None:
    raise UsageError("jaxtune plan: --devices N is required (the config names no TOPOLOGY/CHIPS)")
  if hbm_gb is not None:
    if not hbm_gb > 0:
      raise UsageError(f"--hbm-gb {hbm_gb}: need a positive number of GB per device")
    hbm = hbm_gb * GB
  elif getattr(module, "ACCELERATOR", None) in HBM_BYTES:
    hbm = HBM_BYTES[module.ACCELERATOR]
  else:
    raise UsageError("jaxtune plan: --hbm-gb G is required (the config names no ACCELERATOR of "
                     f"{sorted(HBM_BYTES)})")
  return Hardware(n, hbm, getattr(module, "TOPOLOGY", None))


# -- the abstract state ------------------------------------------------------------------------------------


class _Keys:
  """Stands in for nnx.Rngs under eval_shape: keys do not change shapes, and a fixed key skips jax 0.10's
  per-update tracer bookkeeping on the Rngs counter (2 s instead of 13 s for an unrolled 70B model)."""

  def params(self):
    return jax.random.key(0)


def abstract_model(cfg: Config) -> nnx.Module:
  """The model the run trains, as shapes: the config's dtypes, remat, layout, quantized base and adapters."""
  return _abstract_model(cfg.model, cfg.lora)


@functools.lru_cache(maxsize=4)  # suggestions re-plan the same model under other mesh and batch settings
def _abstract_model(model_cfg, lora_cfg) -> nnx.Module:
  mcfg, hf = model_config(model_cfg.path)
  one = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])  # shapes do not depend on the mesh

  def create():
    rngs = nnx.Rngs(0) if model_cfg.scan_layers else _Keys()  # nnx.vmap splits real Rngs over the layers
    model = build_model(mcfg, rngs=rngs, dtype=compute_dtype(model_cfg.dtype),
                        param_dtype=jnp_dtype(model_cfg.param_dtype), remat=model_cfg.remat,
                        attention_impl=model_cfg.attention, hf_config=hf, scan_layers=model_cfg.scan_layers,
                        quantize=None if model_cfg.quantize == "none" else model_cfg.quantize)
    if lora_cfg.rank > 0:
      add_lora(model, rank=lora_cfg.rank, alpha=lora_cfg.alpha, targets=lora_cfg.targets, rngs=nnx.Rngs(0))
    return model

  with jax.set_mesh(one):
    return nnx.eval_shape(create)


def _placed(state: nnx.State, mesh) -> Any:
  """The abstract arrays of `state`, each with its sharding on `mesh` from the rules table."""
  shardings = mesh_lib.state_shardings(state, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def abstract_state(cfg: Config, model: nnx.Module, mesh) -> tuple[nnx.GraphDef, TrainState, Any, Any]:
  """(graphdef, abstract TrainState placed on `mesh`, tx, schedule), as `jaxtune.train.state.init_state` makes it."""
  from jaxtune.train.state import split_model
  graphdef, params, rest = split_model(model)
  params, rest = _placed(params, mesh), _placed(rest, mesh)
  tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
  opt = jax.eval_shape(tx.init, params)
  opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), opt,
                     opt_state_shardings(tx, params))
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
  return graphdef, TrainState(step=step, params=params, opt_state=opt, rest=rest), tx, schedule


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of placed abstract arrays."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_batch(cfg: Config, objective: objectives.Objective, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the step takes: each field [rows, seq_len] (DPO's per-segment fields [rows, segments])."""
  rows, sh = cfg.train.batch_size, mesh_lib.batch_sharding(mesh)
  per_segment = {"seq_ids": jnp.int32, "ref_logps": jnp.float32}
  return {k: jax.ShapeDtypeStruct((rows, DPO_SEGMENTS) if k in per_segment else (rows, cfg.data.seq_len),
                                  per_segment.get(k, jnp.int32),
                                  sharding=NamedSharding(mesh, P(sh.spec[0])) if k in per_segment else sh)
          for k in objective.fields}


def _objective(cfg: Config) -> objectives.Objective:
  if cfg.train.objective == "distill":
    raise ConfigError("jaxtune plan: train.objective='distill' is not planned yet (its teacher's memory); plan "
                      "the student with --config.train.objective=sft and add the teacher's params")
  return objectives.for_config(cfg)


# -- memory ------------------------------------------------------------------------------------------------


def sizes_for(cfg: Config, n: int) -> dict[str, int]:
  """The config's mesh axis sizes on `n` devices (-1 takes what is left); the axes must use all `n`."""
  m = cfg.mesh
  sizes = mesh_lib.mesh_sizes(m.data, m.fsdp, m.tensor, n, context=m.context)
  if math.prod(sizes.values()) != n:
    raise ConfigError(f"config key 'mesh': {sizes} uses {math.prod(sizes.values())} devices, the plan is for {n} "
                      "(--devices); set one axis to -1 or match the sizes")
  return sizes


def state_memory(cfg: Config, objective, state: TrainState) -> tuple[float, float, float]:
  """(params, optimizer, grads) bytes per device, exact from the placed abstract state."""
  trained = shard_bytes(state.params)
  params = trained + shard_bytes(state.rest) + (trained if objective.has_frozen else 0)  # a live reference's copy
  grads = trained * (2 if cfg.train.grad_accum > 1 else 1)  # the scan's accumulator beside each micro-step's
  return params, shard_bytes(state.opt_state), grads


def activation_estimate(cfg: Config, m: ModelConfig, axes: dict[str, int]) -> float:
  """Bytes of activations per device for one micro-step: a rough upper-end estimate.

  Saved per layer: the residual stream (remat full), plus the matmul outputs (dots) or everything incl.
  attention scores (none). Working set: one layer's forward+backward intermediates, its [heads, seq, seq]
  float32 scores and their gradient (the XLA attention path materialises them), and the float32 logits
  with their log-softmax and gradient. Under context parallelism a device holds seq / context tokens of
  each row, its attention runs blockwise (no [seq, seq] scores: the gathered K/V of the row instead), and
  with train.loss_chunk the logits are those of one chunk.
  """
  data, fsdp, tensor, context = axes["data"], axes["fsdp"], axes["tensor"], axes["context"]
  rows = max(1, cfg.train.batch_size // cfg.train.grad_accum // (data * fsdp))
  T = cfg.data.seq_len
  tok = rows * T // context
  act = jnp.dtype(compute_dtype(cfg.model.dtype)).itemsize
  D, L = m.hidden_size, m.num_layers
  q, kv = m.num_heads * m.head_dim / tensor, m.num_kv_heads * m.head_dim / tensor
  f, v, heads = m.intermediate_size / tensor, m.vocab_size / tensor, m.num_heads / tensor
  layer = tok * (4 * D + q + 2 * kv + 3 * f) * act
  scores = rows * heads * T * T * 4 * 2
  if context > 1:
    scores = rows * T * 2 * kv * (act + 4)
  saved = {"full": tok * D * act, "none": layer + scores}.get(cfg.model.remat, layer)  # dots*: the matmul outputs
  chunk = cfg.train.loss_chunk
  logits = (rows * min(chunk, T // context) if chunk else tok) * v * 4 * 3
  return L * saved + 2 * layer + scores + logits


def compile_step(cfg: Config, objective, graphdef, state: TrainState, tx, schedule, mesh):
  """XLA's memory analysis of the real train step compiled ahead of time for `mesh`."""
  from jaxtune.train.step import jit_train_step
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  frozen = state.params if objective.has_frozen else None
  frozen_sh = state_sh.params if frozen is not None else None
  step = jit_train_step(graphdef, tx, schedule, cfg.train.grad_accum, state_sh, mesh_lib.batch_sharding(mesh),
                        skip_nonfinite=cfg.train.skip_nonfinite, objective=objective, frozen_shardings=frozen_sh)
  args = (state, abstract_batch(cfg, objective, mesh)) + ((frozen,) if frozen is not None else ())
  with jax.set_mesh(mesh):
    return step.lower(*args).compile().memory_analysis()


def compiled_peak(ma) -> float:
  """Per-device peak of a compiled step: its arguments and outputs (less the donated ones) and temporaries."""
  return ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes


def cpu_devices(n: int) -> list | None:
  """`n` CPU devices to compile for: asks jax for more while its backends are not started yet (never fewer
  than XLA_FLAGS or the config already ask for), else uses those the process has; None when there are fewer."""
  forced = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
  if n > max(int(forced.group(1)) if forced else 1, jax.config.jax_num_cpu_devices):
    try:
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
      pass  # the backends are up: what we have is what there is
  devices = jax.devices("cpu")
  return devices[:n] if len(devices) >= n else None


def memory(cfg: Config, n: int, *, compile: bool | None = None) -> tuple[Memory, str, float]:
  """(Memory per device, source, estimated activations) of `cfg` on `n` devices. `compile`: None = when
  feasible (n CPU devices available, model under COMPILE_MAX_PARAMS), True = must, False = estimate."""
  mcfg, _ = model_config(cfg.model.path)
  axes = sizes_for(cfg, n)
  check_batch(cfg, axes)
  objective = _objective(cfg)
  devices = None  # asked for before anything starts jax's backends (then n fake CPU devices can still be had)
  if compile or (compile is None and mcfg.num_params <= COMPILE_MAX_PARAMS):
    devices = cpu_devices(n)
    if devices is None and compile:
      raise UsageError(f"jaxtune plan --compile: {n} devices asked for, this process has "
                       f"{len(jax.devices('cpu'))} CPU devices (run it in a fresh process)")
  model = abstract_model(cfg)
  estimated = activation_estimate(cfg, mcfg, axes)
  if devices is None:
    mesh = AbstractMesh(tuple(axes.values()), mesh_lib.AXES, axis_types=(AxisType.Auto,) * len(axes))
    _, state, _, _ = abstract_state(cfg, model, mesh)
    return Memory(*state_memory(cfg, objective, state), estimated), "estimate", estimated
  mesh = mesh_lib.make_mesh(**axes, devices=devices)
  graphdef, state, tx, schedule = abstract_state(cfg, model, mesh)
  params, opt, grads = state_memory(cfg, objective, state)
  peak = compiled_peak(compile_step(cfg, objective, graphdef, state, tx, schedule, mesh))
  return Memory(params, opt, grads, max(0.0, peak - params - opt - grads)), "compiled", estimated


def check_batch(cfg: Config, axes: dict[str, int]) -> None:
  """The batch and sequence split over the mesh (the run's own check, `jaxtune.train.setup.check_batch`)."""
  from jaxtune.train.setup import check_batch as run_check
  run_check(cfg, axes)


# -- suggestions -------------------------------------------------------------------------------------------


def with_keys(cfg: Config, changes: dict[str, Any]) -> Config:
  """`cfg` with dotted keys changed, validated like a config file."""
  d = cfg.to_dict()
  for key, value in changes.items():
    section, name = key.split(".")
    d[section][name] = value
  return Config.from_dict(d)


def candidates(cfg: Config, mem: Memory, hw: Hardware, axes: dict[str, int]) -> list[tuple[str, list[dict]]]:
  """Changes worth trying, from the numbers: (why, [{key: value}, ...] from the smallest step up)."""
  static = mem.params + mem.optimizer + mem.grads
  share = f"params+optimizer+grads are {100 * static / hw.hbm:.0f}% of HBM"
  data, fsdp, context = axes["data"], axes["fsdp"], axes["context"]
  steps = lambda limit: [1 << i for i in range(1, 9) if (1 << i) <= limit]  # noqa: E731
  micro = cfg.train.batch_size // cfg.train.grad_accum
  out = [
      (share, [{"mesh.fsdp": fsdp * k, "mesh.data": data // k} for k in steps(data) if data % k == 0]),
      (f"activations are {100 * mem.activations / hw.hbm:.0f}% of HBM",
       [{"model.remat": "full"}] if cfg.model.remat != "full" else []),
      ("the float32 logits of a whole row", [{"train.loss_chunk": c} for c in (2048, 1024, 512, 256, 128)
                                             if c < (cfg.train.loss_chunk or 1 << 30)
                                             and c < cfg.data.seq_len // context]),
      ("fewer rows per micro-step", [{"train.grad_accum": cfg.train.grad_accum * k} for k in steps(micro)
                                     if micro % k == 0 and (micro // k) % (data * fsdp) == 0]),
      (f"a {cfg.data.seq_len}-token row's activations on one device",
       [{"mesh.context": context * k, "mesh.data": data // k} for k in steps(data)
        if data % k == 0 and cfg.data.seq_len % (context * k) == 0]),
      ("the frozen base in float", [{"model.quantize": q} for q in ("int8", "nf4")]
       if cfg.lora.rank > 0 and cfg.model.quantize == "none" else []),
      (share + " on these devices", [{"mesh.fsdp": fsdp * k, "devices": hw.devices * k} for k in steps(256)]),
  ]
  return [(why, options) for why, options in out if options]


def suggest(cfg: Config, mem: Memory, hw: Hardware, axes: dict[str, int], act_scale: float,
            compiled: bool) -> tuple[str, ...]:
  """For each kind of change, its smallest step that fits when re-planned, as `--config.K=V ...: about X GB
  (why)`, in the order of `candidates`. Each step is screened analytically (activations scaled by
  `act_scale`); when the plan was `compiled`, a step that passes is compiled too where feasible, so what is
  suggested fits by the plan's own measure."""
  found = []
  for why, options in candidates(cfg, mem, hw, axes):
    for changes in options:
      changes = dict(changes)
      n = changes.pop("devices", hw.devices)
      try:
        other = with_keys(cfg, changes)
        m, _, est = memory(other, n, compile=False)
        total = m.params + m.optimizer + m.grads + est * act_scale
        if total <= HEADROOM * hw.hbm and compiled:
          m, source, _ = memory(other, n)
          total = m.total if source == "compiled" else total
      except (ConfigError, UsageError):
        continue  # a change the config cannot take (e.g. a batch that no longer splits)
      if total <= HEADROOM * hw.hbm:
        flags = " ".join(f"--config.{k}={v}" for k, v in changes.items())
        found.append(flags + (f" --devices {n}" if n != hw.devices else "") + f": about {total / GB:.2f} GB ({why})")
        break
  return tuple(found)


def plan(cfg: Config, hw: Hardware, *, compile: bool | None = None) -> Plan:
  """The per-device memory of `cfg` on `hw`, with suggestions when it does not fit."""
  axes = sizes_for(cfg, hw.devices)
  mem, source, estimated = memory(cfg, hw.devices, compile=compile)
  result = Plan(axes, hw, mem, source)
  if result.fits:
    return result
  act_scale = mem.activations / estimated if source == "compiled" and estimated > 0 else 1.0
  return dataclasses.replace(result, suggestions=suggest(cfg, mem, hw, axes, act_scale, source == "compiled"))
