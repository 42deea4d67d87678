"""LoRA adapters on the attention and MLP projections: add, merge, and name like PEFT.

Adapters are `nnx.LoRAParam` variables, so the train state trains exactly them
(`nnx.split(model, nnx.LoRAParam, ...)`) while the base `nnx.Param` weights stay
frozen with no optimizer moments. B starts at zero: a fresh adapter leaves the
model's outputs unchanged.
"""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.errors import ConfigError
from jaxtune.mesh import state_shardings
from jaxtune.models.layers import Linear

# lora.targets name -> (sub-module, projection) inside a decoder layer; HF/PEFT names.
TARGETS = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
           "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
           "down": ("mlp", "down_proj")}


def _projection(layer, target: str) -> Linear:
  sub, proj = TARGETS[target]
  return getattr(getattr(layer, sub), proj)


def _layer_names(model, target: str) -> list[str]:
  """The HF module path of `target` in every layer, in order."""
  sub, proj = TARGETS[target]
  return [f"model.layers.{i}.{sub}.{proj}" for i in range(model.config.num_layers)]


def targeted(model, targets) -> Iterator[tuple[list[str], Linear]]:
  """(HF module paths, Linear) for every targeted projection: one Linear per layer, or with scanned layers
  (`model.scan_layers`) one stacked Linear [L, in, out] holding every layer's (its paths in layer order)."""
  bad = sorted(set(targets) - set(TARGETS))
  if bad:
    raise ConfigError(f"config key 'lora.targets': {bad} not in {sorted(TARGETS)}")
  if getattr(model, "scan_layers", False):
    for t in targets:
      yield _layer_names(model, t), _projection(model.model.layers, t)
    return
  for i, layer in enumerate(model.model.layers):
    for t in targets:
      yield [_layer_names(model, t)[i]], _projection(layer, t)


def add_lora(model, *, rank: int, alpha: float, targets, rngs: nnx.Rngs) -> None:
  """Adds rank-`rank` adapters (A ~ N(0, 1/in), B = 0) to the targeted projections, in place. A is drawn
  layer by layer, projection by projection, in the same order whether the layers are stacked or not, so a
  scanned model gets the adapters an unrolled one gets."""
  if rank < 1:
    raise ConfigError(f"config key 'lora.rank': must be >= 1 to add adapters, got {rank}")
  projections = list(targeted(model, targets))
  draws: dict[int, list[jax.Array]] = {}  # projection -> its per-layer draws
  order = [(i, j) for i in range(model.config.num_layers) for j in range(len(targets))]
  if not getattr(model, "scan_layers", False):
    order = [(0, j) for j in range(len(projections))]
  for _, j in order:
    d_in = projections[j][1].kernel_shape[-2]
    draws.setdefault(j, []).append(jax.random.normal(rngs.params(), (d_in, rank), jnp.float32) / jnp.sqrt(d_in))
  for j, (_, lin) in enumerate(projections):
    *stack, d_in, d_out = lin.kernel_shape
    *stack_axes, in_axis, out_axis = lin.kernel_axes
    dtype = lin.param_dtype  # adapters train in param_dtype, also over a quantized base
    a = jnp.stack(draws[j]) if stack else draws[j][0]
    lin.lora_a = nnx.LoRAParam(a.astype(dtype), logical_axes=(*stack_axes, in_axis, "lora"))
    lin.lora_b = nnx.LoRAParam(jnp.zeros((*stack, rank, d_out), dtype), logical_axes=(*stack_axes, "lora", out_axis))
    lin.lora_scale = float(alpha) / rank


def attach_lora(model, lora_cfg, *, seed: int, mesh=None) -> None:
  """Adds the adapters `lora_cfg` (rank, alpha, targets) asks for, deterministic from `seed`, placed by the
  rules table on `mesh` (one device when None)."""
  add_lora(model, rank=lora_cfg.rank, alpha=lora_cfg.alpha, targets=lora_cfg.targets, rngs=nnx.Rngs(seed))
  if mesh is not None:
    adapters = nnx.state(model, nnx.LoRAParam)
    nnx.update(model, jax.device_put(adapters, state_shardings(adapters, mesh)))


def has_lora(model) -> bool:
  return any(isinstance(v, nnx.LoRAParam) for _, v in nnx.iter_graph(model))


def merge_lora(model) -> None:
  """Folds every adapter into its base kernel (kernel += scale * A @ B) and removes it, in place. A quantized
  base is dequantized first: the merged kernel is a float parameter in param_dtype."""
  for _, lin in nnx.iter_graph(model):
    if isinstance(lin, Linear) and lin.lora_a is not None:
      delta = lin.lora_scale * (lin.lora_a[...].astype(jnp.float32) @ lin.lora_b[...].astype(jnp.float32))
      if lin.quantize is None:
        k = lin.kernel[...]
        lin.kernel[...] = (k.astype(jnp.float32) + delta).astype(k.dtype)
      else:
        merged = (lin.weight(jnp.float32) + delta).astype(lin.param_dtype)
        lin.kernel = nnx.Param(merged, logical_axes=lin.kernel_axes)
        lin.kernel_q = nnx.data(None)
        lin.kernel_scale = nnx.data(None)
        lin.quantize = None
      lin.lora_a = nnx.data(None)
      lin.lora_b = nnx.data(None)
      lin.lora_scale = 0.0


def peft_tensors(model) -> dict[str, jax.Array]:
  """Adapter weights under PEFT's names and layouts (lora_A [r, in], lora_B [out, r]), per layer (a scanned
  model's stacked adapters unstacked)."""
  out = {}
  for paths, lin in targeted_existing(model):
    a, b = lin.lora_a[...], lin.lora_b[...]
    for i, path in enumerate(paths):
      out[f"base_model.model.{path}.lora_A.weight"] = (a[i] if a.ndim == 3 else a).T
      out[f"base_model.model.{path}.lora_B.weight"] = (b[i] if b.ndim == 3 else b).T
  return out


def targeted_existing(model) -> Iterator[tuple[list[str], Linear]]:
  for paths, lin in targeted(model, tuple(TARGETS)):
    if lin.lora_a is not None:
      yield paths, lin
