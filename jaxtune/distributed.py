"""Multi-host start-up: `jax.distributed.initialize()` where a cluster is detected."""

from __future__ import annotations

import os

import jax

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize() -> bool:
  """Initialises JAX's distributed runtime from env vars, SLURM or a Cloud TPU pod; True if done."""
  if all(os.environ.get(k) for k in _ENV):
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    return True
  multi_slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  multi_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
  if multi_slurm or multi_tpu:
    jax.distributed.initialize()  # reads the topology from SLURM / the TPU metadata
    return True
  return False


def all_true(ok: bool) -> bool:
  """Whether `ok` holds on every process (each process passes its own; one process: `ok`)."""
  if jax.process_count() == 1:
    return bool(ok)
  import numpy as np
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(ok)))).all())


def agree(error: Exception | None, what: str) -> None:
  """Raises on every process when `what` failed on any: a process raises its own error, the others a
  TrainingError naming the processes that failed (so that no process goes on alone and waits forever in
  a collective for one that stopped)."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  import numpy as np
  from jax.experimental import multihost_utils

  from jaxtune.errors import TrainingError
  failed = np.flatnonzero(np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).ravel())
  if error is not None:
    raise error
  if failed.size:
    raise TrainingError(f"{what} failed on process {', '.join(map(str, failed.tolist()))} (its log has the error)")
