"""Orbax checkpoints of a run: params, optimizer state, data iterator and metadata.

Layout: `RUN_DIR/checkpoints/<step>/{params,opt_state,data_iter,meta}`. Params
are a separate item so that export restores them alone, without the optimizer
moments. A step dir that is empty or unfinished is skipped with a warning.

A finished checkpoint can still be damaged (truncated or zeroed files, bad
metadata, a missing item): Orbax then raises, or, for zeroed array bytes, restores
zeros without a word. So `meta` holds a fingerprint of the params and optimizer
state (a wrapping sum of their bits, weighted by position: equal on any mesh),
checked after every restore. A resumed run falls back to the newest checkpoint
that restores and matches, quarantining the newer damaged ones as
`<step>.bad-<time>`; when none restores it stops and renames nothing. Export
names the damaged step and the ones that restore.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxtune import distributed, io, rundir
from jaxtune.errors import CheckpointError, MissingPathError, TrainingError, UserError
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


class Damaged(Exception):
  """A finished checkpoint whose arrays do not match the fingerprint saved with them."""


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_hash(x: jax.Array) -> jax.Array:
  """sum(bits[i] * (2 * i + 1)) mod 2**32 over the flat index i: any changed element changes it."""
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
  idx = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(x.ndim)):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, x.shape, d) * jnp.uint32(stride % 2**32)
    stride *= x.shape[d]
  return jnp.sum(bits * (idx * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _fingerprint(tree) -> jax.Array:
  out = jnp.uint32(0)
  for i, x in enumerate(jax.tree.leaves(tree)):
    out = out + _leaf_hash(x) * jnp.uint32((2 * i + 1) % 2**32)
  return out


def fingerprint(tree: Any) -> int:
  """A 32-bit fingerprint of a pytree of arrays, the same on any mesh and sharding."""
  return int(jax.device_get(_fingerprint(tree)))


def _check_fingerprint(meta: dict, item: str, tree: Any) -> None:
  want = (meta.get("fingerprint") or {}).get(item)
  if want is not None and fingerprint(tree) != want:
    raise Damaged(f"its {item} do not match the fingerprint saved with them (zeroed or altered files)")


def save(mgr: ocp.CheckpointManager, state: TrainState, data_iter: Any, meta: dict[str, Any], *,
         force: bool = False) -> bool:
  """Starts saving `state` (async unless the manager is synchronous); a failure to start (or the failure of the
  previous async save, which Orbax reports here) is a TrainingError naming the step."""
  step = int(jax.device_get(state.step))
  meta = {**meta, "step": step,
          "fingerprint": {"params": fingerprint(state.params), "opt_state": fingerprint(state.opt_state)}}
  items = dict(params=ocp.args.PyTreeSave(state.params),
               opt_state=ocp.args.PyTreeSave(state.opt_state),
               meta=ocp.args.JsonSave(meta))
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  with save_errors(mgr, step):
    return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def wait(mgr: ocp.CheckpointManager, step: int | None) -> None:
  """Waits for the async save of `step` in flight; its failure is a TrainingError naming the step."""
  with save_errors(mgr, step):
    mgr.wait_until_finished()


def os_reason(e: BaseException) -> str:
  """The operating-system reason of a failed write ("No space left on device"), also when tensorstore
  wraps it in a ValueError that only carries the errno; else the error's first line."""
  for x in (e, e.__cause__, e.__context__):
    if isinstance(x, OSError) and x.strerror:
      return x.strerror
    m = re.search(r"os_error_code='?(\d+)", str(x)) if x is not None else None
    if m:
      return os.strerror(int(m.group(1)))
  return _reason(e)


@contextlib.contextmanager
def save_errors(mgr: ocp.CheckpointManager, step: int | None):
  """Turns the failure of a save into TrainingError("saving checkpoint N failed: REASON; ..."): the
  unfinished step dir is removed (freeing its space) and the newest finished checkpoint is named."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - Orbax, tensorstore and the file system raise many kinds
    reason = os_reason(e)
    try:
      if jax.process_index() == 0:
        for p in io.Path(mgr.directory).glob(f"{step if step is not None else '*'}.orbax-checkpoint-tmp*"):
          if io.is_remote(str(p)):
            p.rmtree(missing_ok=True)
          else:
            shutil.rmtree(p, ignore_errors=True)
      kept = good_steps(mgr)
    except Exception:  # noqa: BLE001 - the directory itself may be unreadable now
      kept = []
    what = f"checkpoint {step}" if step is not None else "a checkpoint"
    raise TrainingError(f"saving {what} failed: {reason}; "
                        + (f"checkpoint {kept[0]} is kept" if kept else "no checkpoint was kept")
                        + f" ({mgr.directory})") from None


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore_arrays(abstract_tree) -> ocp.args.PyTreeRestore:
  """Restores onto the shapes, dtypes and shardings of `abstract_tree` (any mesh)."""
  return ocp.args.PyTreeRestore(item=abstract_tree,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


def restore(mgr: ocp.CheckpointManager, step: int, state: TrainState, data_iter: Any) -> tuple[TrainState, dict]:
  """Restores `step` onto the shardings of `state` (which may live on another mesh); raises `Damaged` when
  the arrays do not match their fingerprint."""
  items = dict(params=_restore_arrays(_abstract(state.params)),
               opt_state=_restore_arrays(_abstract(state.opt_state)),
               meta=ocp.args.JsonRestore())
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
  r = mgr.restore(step, args=ocp.args.Composite(**items))
  _check_fingerprint(r.meta, "params", r.params)
  _check_fingerprint(r.meta, "opt_state", r.opt_state)
  restored = state.replace(step=jax.device_put(jax.numpy.asarray(r.meta["step"], jax.numpy.int32),
                                               state.step.sharding),
                           params=r.params, opt_state=r.opt_state)
  return restored, r.meta


def _reason(e: BaseException) -> str:
  """One line saying why a restore or save failed: the innermost error of the chain (tensorstore's own
  status line, "OUT_OF_RANGE: Error reading ...", rather than Orbax's wrapper around it)."""
  if isinstance(e, Damaged):
    return str(e)
  for _ in range(10):
    inner = e.__cause__ or e.__context__
    if inner is None:
      break
    e = inner
  first = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first[:300]}"


def quarantine_step(mgr: ocp.CheckpointManager, step: int) -> str:
  path = io.Path(mgr.directory) / str(step)
  dest = path.parent / f"{step}.bad-{int(time.time())}"
  path.rename(dest)
  return str(dest)


def restore_latest(mgr: ocp.CheckpointManager, state: TrainState, data_iter: Any, *,
                   check_meta: Callable[[dict], None], quarantine: bool) -> tuple[TrainState, dict, int] | None:
  """The newest finished checkpoint that restores and matches its fingerprint: (state, meta, step), or None
  when there is no finished checkpoint. `check_meta(meta)` may refuse a checkpoint (a UserError, raised as
  is). Newer checkpoints that failed are renamed `<step>.bad-<time>` (with `quarantine`, by process 0) once
  an older one restored; when none restores, a CheckpointError lists each step's reason and nothing is
  renamed. Every process takes the same decision (a shard one process failed to read fails them all)."""
  failed: list[tuple[int, str]] = []
  for step in good_steps(mgr, quarantine=quarantine):
    error: BaseException | None = None
    try:
      meta = read_meta(mgr, step)
    except Exception as e:  # noqa: BLE001 - unreadable metadata is damage like any other
      error = e
    if error is None:
      check_meta(meta)
      try:
        restored, meta = restore(mgr, step, state, data_iter)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many kinds for damaged files
        error = e
    if distributed.all_true(error is None):
      for bad, reason in failed:
        where = quarantine_step(mgr, bad) if quarantine else f"{mgr.directory}/{bad}"
        log.warning("checkpoint %d is damaged (%s): set aside as %s; resuming from checkpoint %d", bad, reason,
                    where, step)
      if failed and quarantine:
        mgr.reload()
      return restored, meta, step
    failed.append((step, _reason(error) if error is not None else "it failed to restore on another process"))
    log.warning("checkpoint %s/%d cannot be restored (%s); trying the one before", mgr.directory, step,
                failed[-1][1])
  if failed:
    raise CheckpointError(f"no checkpoint under {mgr.directory} can be restored: "
                          + "; ".join(f"step {s}: {r}" for s, r in failed)
                          + ". Move the checkpoints directory away to start the run over")
  return None


def _restore_params_of(mgr: ocp.CheckpointManager, step: int, abstract_params: Any) -> tuple[Any, dict]:
  r = mgr.restore(step, args=ocp.args.Composite(params=_restore_arrays(abstract_params),
                                                meta=ocp.args.JsonRestore()))
  _check_fingerprint(r.meta, "params", r.params)
  return r.params, r.meta


def _try_params(mgr: ocp.CheckpointManager, step: int, abstract_params: Any) -> tuple[Any, str | None]:
  """((params, meta), None) or (None, why it failed); every process agrees."""
  try:
    out, error = _restore_params_of(mgr, step, abstract_params), None
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - Orbax and tensorstore raise many kinds for damaged files
    out, error = None, _reason(e)
  if not distributed.all_true(error is None):
    return None, error or "it failed to restore on another process"
  return out, None


def _finished(mgr: ocp.CheckpointManager, run_dir: str) -> list[int]:
  steps = good_steps(mgr)
  if not steps:
    raise MissingPathError(f"{run_dir} has no finished checkpoint yet (under {checkpoint_dir(run_dir)}): a run "
                           "saves one every checkpoint.every steps and when it ends")
  return steps


def finished_steps(run_dir: str) -> list[int]:
  """The finished checkpoints of a run dir, newest first; none is a MissingPathError saying so."""
  if not io.exists(checkpoint_dir(run_dir)):
    raise MissingPathError(f"{run_dir} has no checkpoints/ directory: not a jaxtune run dir, or its run has not "
                           "saved a checkpoint yet")
  mgr = make_manager(run_dir, async_save=False)
  try:
    return _finished(mgr, run_dir)
  finally:
    mgr.close()


def restore_params(run_dir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, dict, int]:
  """Params (and meta) of `step` (default: the latest finished one), for export and generation. A damaged
  checkpoint is a CheckpointError naming it and the older ones that restore; nothing is renamed."""
  finished_steps(run_dir)
  mgr = make_manager(run_dir, async_save=False)
  try:
    steps = _finished(mgr, run_dir)
    if step is None:
      step = steps[0]
    elif step not in steps:
      raise MissingPathError(f"step {step} is not a finished checkpoint of {run_dir}; have {sorted(steps)}")
    out, error = _try_params(mgr, step, abstract_params)
    if error is None:
      return (*out, step)
    good = [s for s in steps if s != step and _try_params(mgr, s, abstract_params)[1] is None]
    raise CheckpointError(f"checkpoint {step} of {run_dir} is damaged ({error}); "
                          + (f"these restore: {', '.join(map(str, good))} (pass --step N)" if good else
                             "no other finished checkpoint restores"))
  finally:
    mgr.close()
