"""Orbax checkpoints of a run: params, optimizer state, data iterator and metadata.

Layout: `RUN_DIR/checkpoints/<step>/{params,opt_state,data_iter,meta}`. Params
are a separate item so that export restores them alone, without the optimizer
moments. A step dir that is empty or unfinished is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxtune import io, rundir
from jaxtune.errors import MissingPathError
from jaxtune.train.state import TrainState

log = logging.getLogger(__name__)

_FINAL_MARKER = "_CHECKPOINT_METADATA"


def checkpoint_dir(run_dir: str) -> str:
  """RUN_DIR/checkpoints; a local run dir is made absolute (Orbax refuses relative paths)."""
  return io.join(io.abspath(run_dir), rundir.CHECKPOINTS)


def make_manager(run_dir: str, *, keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, enable_async_checkpointing=async_save,
                                         create=True)
  # No zstd: float weights barely compress, and compressing a few GB on the host would compete
  # with the train step for CPU while an async save is writing.
  arrays = lambda: ocp.PyTreeCheckpointHandler(use_compression=False)
  return ocp.CheckpointManager(io.Path(checkpoint_dir(run_dir)), options=options,
                               item_handlers={"params": arrays(), "opt_state": arrays(),
                                              "meta": ocp.JsonCheckpointHandler(),
                                              "data_iter": grain.checkpoint.CheckpointHandler()})


def good_steps(mgr: ocp.CheckpointManager, *, quarantine: bool = False) -> list[int]:
  """Finished steps, newest first. An empty or unfinished step dir is skipped with a warning
  and, with `quarantine`, renamed to `<step>.bad-<time>` so a later save of that step can succeed."""
  out = []
  mgr.reload()
  for step in sorted(mgr.all_steps(), reverse=True):
    path = io.Path(mgr.directory) / str(step)
    if (path / _FINAL_MARKER).exists() and (path / "params").exists() and (path / "meta").exists():
      out.append(step)
      continue
    log.warning("skipping checkpoint dir %s: empty or unfinished", path)
    if quarantine and path.exists():
      path.rename(path.parent / f"{step}.bad-{int(time.time())}")
  if quarantine:
    mgr.reload()
  return out


def read_meta(mgr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  path = io.Path(mgr.directory) / str(step) / "meta" / "metadata"
  return json.loads(path.read_text()) if path.exists() else {}


def save(mgr: ocp.CheckpointManager, state: TrainState, data_iter: Any, meta: dict[str, Any], *,
         force: bool = False) -> bool:
  step = int(jax.device_get(state.step))
  items = dict(params=ocp.args.PyTreeSave(state.params),
               opt_state=ocp.args.PyTreeSave(state.opt_state),
               meta=ocp.args.JsonSave({**meta, "step": step}))
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore_arrays(abstract_tree) -> ocp.args.PyTreeRestore:
  """Restores onto the shapes, dtypes and shardings of `abstract_tree` (any mesh)."""
  return ocp.args.PyTreeRestore(item=abstract_tree,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


def restore(mgr: ocp.CheckpointManager, step: int, state: TrainState, data_iter: Any) -> tuple[TrainState, dict]:
  """Restores `step` onto the shardings of `state` (which may live on another mesh)."""
  items = dict(params=_restore_arrays(_abstract(state.params)),
               opt_state=_restore_arrays(_abstract(state.opt_state)),
               meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  r = mgr.restore(step, args=ocp.args.Composite(**items))
  restored = state.replace(step=jax.device_put(jax.numpy.asarray(r.meta["step"], jax.numpy.int32),
                                               state.step.sharding),
                           params=r.params, opt_state=r.opt_state)
  return restored, r.meta


def restore_params(run_dir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, dict, int]:
  """Params (and meta) of `step` (default: the latest good one), for export and generation."""
  mgr = make_manager(run_dir, async_save=False)
  steps = good_steps(mgr)
  if not steps:
    raise MissingPathError(f"no finished checkpoint under {checkpoint_dir(run_dir)}")
  if step is None:
    step = steps[0]
  elif step not in steps:
    raise MissingPathError(f"step {step} is not a finished checkpoint of {run_dir}; have {sorted(steps)}")
  r = mgr.restore(step, args=ocp.args.Composite(params=_restore_arrays(abstract_params),
                                                meta=ocp.args.JsonRestore()))
  mgr.close()
  return r.params, r.meta, step
