"""The device mesh and the one table that maps logical axes to mesh axes.

Parameters carry logical axis names in their `logical_axes` metadata
(`nnx.Param(x, logical_axes=("embed", "mlp"))`); activations and batches are
annotated with the same vocabulary. Nothing outside this file names a mesh axis.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxtune.errors import ConfigError

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "context", "tensor")  # the device array's order: tensor innermost, then context

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "seq": "context",  # context parallelism: activations, token ids, positions, segment ids, loss masks
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",  # flattened q heads * head_dim
    "kv_heads": "tensor",  # flattened kv heads * head_dim
    "mlp": "tensor",
    "norm": None,
    "head_dim": None,
    "lora": None,
    "layers": None,  # scanned decoder blocks' stacked axis (model.scan_layers)
}


def mesh_sizes(data: int, fsdp: int, tensor: int, n_devices: int, *, context: int = 1) -> dict[str, int]:
  """{axis: size} of a (data, fsdp, context, tensor) mesh on `n_devices`, with a -1 size resolved; a
  ConfigError when it does not fit."""
  sizes = [data, fsdp, context, tensor]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"config key 'mesh': sizes {tuple(sizes)} ({', '.join(AXES)}): {n_devices} devices are "
                        f"not divisible by {known}")
    sizes[sizes.index(-1)] = n_devices // known
  n = math.prod(sizes)
  if n > n_devices:
    raise ConfigError(f"config key 'mesh': {dict(zip(AXES, sizes))} needs {n} devices, this run has {n_devices}")
  return dict(zip(AXES, sizes))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None, *,
              context: int = 1) -> Mesh:
  """A (data, fsdp, context, tensor) mesh; one size may be -1 to take the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = list(mesh_sizes(data, fsdp, tensor, len(devices), context=context).values())
  n = math.prod(sizes)
  if n < len(devices):
    log.warning("mesh %s uses %d of %d devices", dict(zip(AXES, sizes)), n, len(devices))
  arr = np.asarray(devices[:n]).reshape(sizes)
  return Mesh(arr, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def mesh_from_cfg(cfg) -> Mesh:
  return make_mesh(cfg.data, cfg.fsdp, cfg.tensor, context=cfg.context)


def context_size(mesh) -> int:
  """How many ways each row's sequence is split (context parallelism; 1 without a mesh)."""
  return 1 if mesh is None or mesh.empty else mesh.shape.get(RULES["seq"], 1)


def context_axis(mesh) -> str | None:
  """The mesh axis the sequence is sharded over when it has more than one device, else None."""
  return RULES["seq"] if context_size(mesh) > 1 else None


def batch_shards(mesh) -> int:
  """How many ways the batch dimension is split."""
  axes = RULES["batch"]
  return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def logical_to_spec(names: Sequence[str | None] | None, mesh: Mesh | None = None) -> P:
  """PartitionSpec for logical axis names; a mesh axis is used at most once and
  only when it has size > 1 (and, with a mesh, divides the dimension elsewhere)."""
  if names is None:
    return P()
  used: set[str] = set()
  out = []
  for name in names:
    rule = RULES.get(name) if name is not None else None
    if name is not None and name not in RULES:
      raise KeyError(f"logical axis {name!r} has no rule in jaxtune.mesh.RULES")
    axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    axes = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape[a] > 1))
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


_WARNED: set[tuple[str, str, int]] = set()


def _fit(spec: P, shape: Sequence[int], mesh: Mesh, what: str | None = None) -> P:
  """Drops mesh axes that do not divide their dimension (e.g. a tiny vocab): that dimension is then
  replicated over the axis. For a parameter (`what` names it) this is said once per parameter and axis."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    group = (axes,) if isinstance(axes, str) else tuple(axes)
    keep = []
    size = 1
    for a in group:
      if dim % (size * mesh.shape[a]) == 0:
        keep.append(a)
        size *= mesh.shape[a]
      elif what is not None and (what, a, dim) not in _WARNED:
        _WARNED.add((what, a, dim))
        log.warning("%s: dimension %d (shape %s) is not divisible by mesh axis %r of size %d; it is replicated "
                    "over that axis instead of sharded", what, dim, tuple(shape), a, mesh.shape[a])
    out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
  return P(*out)


def sharding_for(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                 what: str | None = None) -> NamedSharding:
  """The sharding of an array with logical axes `names`; `what` names a parameter (see `_fit`)."""
  return NamedSharding(mesh, _fit(logical_to_spec(names, mesh), shape, mesh, what))


def variable_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
  return var.get_metadata().get("logical_axes")


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """NamedShardings for a (possibly abstract) nnx.State, from `logical_axes` metadata."""

  def one(path, var):
    if isinstance(var, nnx.Variable):
      value = var.get_value() if hasattr(var, "get_value") else var.value
      return var.replace(sharding_for(variable_axes(var), value.shape, mesh, what=_dotted(path)))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _dotted(path) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(("batch",) + ("seq",) * (ndim - 1), mesh))


def global_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """The global batch (the same numpy rows on every process) -> sharded arrays; each process copies only
  the slices its own devices hold."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an array by logical names (mesh axes that do not divide a dimension are
  dropped); a no-op outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, sharding_for(names, x.shape, mesh))
