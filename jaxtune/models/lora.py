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


def targeted(model, targets) -> Iterator[tuple[str, Linear]]:
  """(HF module path, Linear) for every targeted projection of every layer."""
  bad = sorted(set(targets) - set(TARGETS))
  if bad:
    raise ConfigError(f"config key 'lora.targets': {bad} not in {sorted(TARGETS)}")
  for i, layer in enumerate(model.model.layers):
    for t in targets:
      sub, proj = TARGETS[t]
      yield f"model.layers.{i}.{sub}.{proj}", getattr(getattr(layer, sub), proj)


def add_lora(model, *, rank: int, alpha: float, targets, rngs: nnx.Rngs) -> None:
  """Adds rank-`rank` adapters (A ~ N(0, 1/in), B = 0) to the targeted projections, in place."""
  if rank < 1:
    raise ConfigError(f"config key 'lora.rank': must be >= 1 to add adapters, got {rank}")
  for _, lin in targeted(model, targets):
    d_in, d_out = lin.kernel.shape
    in_axis, out_axis = lin.kernel.get_metadata()["logical_axes"]
    dtype = lin.kernel[...].dtype
    a = jax.random.normal(rngs.params(), (d_in, rank), jnp.float32) / jnp.sqrt(d_in)
    lin.lora_a = nnx.LoRAParam(a.astype(dtype), logical_axes=(in_axis, "lora"))
    lin.lora_b = nnx.LoRAParam(jnp.zeros((rank, d_out), dtype), logical_axes=("lora", out_axis))
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
  """Folds every adapter into its base kernel (kernel += scale * A @ B) and removes it, in place."""
  for _, lin in nnx.iter_graph(model):
    if isinstance(lin, Linear) and lin.lora_a is not None:
      k = lin.kernel[...]
      delta = lin.lora_scale * (lin.lora_a[...].astype(jnp.float32) @ lin.lora_b[...].astype(jnp.float32))
      lin.kernel[...] = (k.astype(jnp.float32) + delta).astype(k.dtype)
      lin.lora_a = nnx.data(None)
      lin.lora_b = nnx.data(None)
      lin.lora_scale = 0.0


def peft_tensors(model) -> dict[str, jax.Array]:
  """Adapter weights under PEFT's names and layouts (lora_A [r, in], lora_B [out, r])."""
  out = {}
  for path, lin in targeted_existing(model):
    out[f"base_model.model.{path}.lora_A.weight"] = lin.lora_a[...].T
    out[f"base_model.model.{path}.lora_B.weight"] = lin.lora_b[...].T
  return out


def targeted_existing(model) -> Iterator[tuple[str, Linear]]:
  for i, layer in enumerate(model.model.layers):
    for sub, proj in TARGETS.values():
      lin = getattr(getattr(layer, sub), proj)
      if lin.lora_a is not None:
        yield f"model.layers.{i}.{sub}.{proj}", lin
