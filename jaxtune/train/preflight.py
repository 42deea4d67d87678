"""What `jaxtune train` checks before it reads any data or weights, in well under a second, so that a run
that cannot work stops at once with one line instead of after tokenizing the data and loading the model:

  mesh       the mesh fits the devices; the micro-batch divides over its batch axes
  run dir    a directory (or creatable), writable (a probe file is written and removed)
  model      model.path (and distill.teacher) hold a readable, supported config.json, readable safetensors
             headers and tokenizer files (a data.seq_len past the model's max_position_embeddings is a warning)
  attention  model.attention=cudnn / splash only on a platform that has it
  data       every data.train / data.eval source (and eval.prompts, data.chat_template) exists and is of a
             supported kind
  harness    eval.harness_tasks are tasks lm-eval knows (with eval.harness_include_path)

Every process runs them; each stops when any process failed (`distributed.agree`). The run-dir lock is
taken right after (`jaxtune.train.lock`).
"""

from __future__ import annotations

import logging
import os
import tempfile

import jax

from jaxtune import distributed, io
from jaxtune import mesh as mesh_lib
from jaxtune.config import Config
from jaxtune.errors import ConfigError, UserError

log = logging.getLogger(__name__)


def check(cfg: Config) -> None:
  """Raises the first problem found (a UserError naming the key, file or value)."""
  error = None
  try:
    check_mesh(cfg)
    check_run_dir(cfg.run.dir)
    check_attention(cfg.model.attention)
    check_model(cfg)
    check_data(cfg)
    if cfg.eval.harness_tasks:
      from jaxtune.harness import check_tasks
      check_tasks(cfg.eval)
  except UserError as e:
    error = e
  distributed.agree(error, "the pre-flight checks")


def check_mesh(cfg: Config) -> None:
  from jaxtune.train.setup import check_batch
  check_batch(cfg, mesh_lib.mesh_sizes(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, jax.device_count(),
                                       context=cfg.mesh.context))


def check_run_dir(run_dir: str) -> None:
  """run.dir is a directory this process can create and write files in."""
  if io.is_remote(run_dir):
    probe = io.join(run_dir, ".jaxtune-write-probe")
    try:
      io.write_bytes(probe, b"")
      io.remove(probe)
    except Exception as e:  # noqa: BLE001 - any store error: unwritable, no credentials, no bucket
      raise ConfigError(f"config key 'run.dir': cannot write in {run_dir}: {type(e).__name__}: {e}") from None
    return
  if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
    raise ConfigError(f"config key 'run.dir': {run_dir} exists and is not a directory")
  # A run dir that does not exist yet is not made here (a run stopped by a later check leaves nothing): the
  # probe goes in its nearest existing ancestor, where the lock will create it.
  target = os.path.abspath(run_dir)
  while not os.path.lexists(target):
    target = os.path.dirname(target)
  try:
    if not os.path.isdir(target):
      raise ConfigError(f"config key 'run.dir': {target} exists and is not a directory")
    for sub in ("checkpoints",):
      p = os.path.join(run_dir, sub)
      if os.path.lexists(p) and not os.path.isdir(p):
        raise ConfigError(f"config key 'run.dir': {p} exists and is not a directory")
    fd, probe = tempfile.mkstemp(dir=target, prefix=".jaxtune-write-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"config key 'run.dir': cannot write in {run_dir}: {e.strerror or e}"
                      + (f" ({e.filename})" if e.filename and e.filename != run_dir else "")) from None


def check_attention(requested: str) -> None:
  platform = jax.default_backend()
  need = {"cudnn": "gpu", "splash": "tpu"}.get(requested)
  if need is not None and platform != need:
    raise ConfigError(f"config key 'model.attention': {requested!r} needs a {need.upper()}, this run is on "
                      f"{platform!r} (model.attention='auto' picks what the platform has)")


def check_model(cfg: Config) -> None:
  from jaxtune.data.tokenizer import check_tokenizer_files
  from jaxtune.weights.hf_load import check_model_dir, resolve_model_dir
  d = resolve_model_dir(cfg.model.path, what="model.path")
  mcfg = check_model_dir(d)
  check_tokenizer_files(str(d))
  if mcfg.max_position_embeddings and cfg.data.seq_len > mcfg.max_position_embeddings:
    log.warning("data.seq_len=%d is longer than the model's max_position_embeddings=%d (%s/config.json): positions "
                "past it were never trained", cfg.data.seq_len, mcfg.max_position_embeddings, d)
  if cfg.train.objective == "distill":
    check_model_dir(resolve_model_dir(cfg.distill.teacher, what="distill.teacher"))
  if cfg.data.chat_template:
    from jaxtune.data import templates
    templates.resolve(cfg.data.chat_template)


def check_data(cfg: Config) -> None:
  from jaxtune.data import records
  for sources in (cfg.data.train, cfg.data.eval):
    for src in sources:
      for unit in records.expand(src.path):
        records.kind(unit)
  if not cfg.data.train:
    raise ConfigError("config key 'data.train': no training sources")
  if cfg.eval.prompts:
    records.expand(cfg.eval.prompts)
