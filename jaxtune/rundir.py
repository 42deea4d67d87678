"""What a run directory holds besides its checkpoints, and where.

  RUN_DIR/config.json        the resolved config (plus the jaxtune version)
  RUN_DIR/hf_source/         the source config.json, generation_config.json and tokenizer: what export and
                             generate need besides the params
  RUN_DIR/metrics.jsonl      one row per logged step
  RUN_DIR/samples.jsonl      eval-prompt samples
  RUN_DIR/tensorboard/       the same scalars as TensorBoard events
  RUN_DIR/curves.png         train / eval loss, learning rate (and DPO reward accuracy) by step
  RUN_DIR/wandb_run_id       the Weights & Biases run this run logs to (log.wandb_project), kept for resumes
  RUN_DIR/checkpoints/       Orbax checkpoints (jaxtune.train.checkpoint)

Every path goes through `jaxtune.io`, so `run.dir` may be local or `gs://...`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from jaxtune import io
from jaxtune.errors import MissingPathError

CONFIG = "config.json"
HF_SOURCE = "hf_source"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
CURVES = "curves.png"
WANDB_ID = "wandb_run_id"


def path(run_dir: str, *parts: str) -> str:
  return io.join(run_dir, *parts)


def is_run_dir(p: str) -> bool:
  """A jaxtune run dir (checkpoints/ or hf_source/, or a config.json jaxtune wrote), local or remote, even one
  whose run has not saved a checkpoint yet."""
  if io.exists(io.join(p, CHECKPOINTS)) or io.exists(io.join(p, HF_SOURCE)):
    return True
  try:
    return "jaxtune_version" in io.read_json(io.join(p, CONFIG))
  except (OSError, ValueError, TypeError):
    return False


def read_config(run_dir: str) -> dict[str, Any]:
  """The resolved config a run saved (as a dict, without the jaxtune version)."""
  p = io.join(run_dir, CONFIG)
  if not io.exists(p):
    raise MissingPathError(f"{run_dir} is not a jaxtune run dir (no {CONFIG})")
  d = io.read_json(p)
  d.pop("jaxtune_version", None)
  return d


def write_config(run_dir: str, config: dict[str, Any], version: str) -> None:
  io.write_json(io.join(run_dir, CONFIG), {"jaxtune_version": version, **config})


def eos_ids(gen_or_config: dict[str, Any]) -> list[int]:
  eos = gen_or_config.get("eos_token_id")
  return [] if eos is None else list(eos) if isinstance(eos, list) else [eos]


def write_hf_source(run_dir: str, model_dir: str, tokenizer, hf_config: dict | None = None) -> None:
  """RUN_DIR/hf_source/: the source config.json (or `hf_config` when training changed it, e.g. a vocabulary
  grown for added tokens), generation_config.json and the tokenizer as trained.

  The tokenizer's eos (the template's end-of-turn marker when data.chat_template set it) is added to the
  declared eos ids, so that transformers and vLLM stop where the tuned model ends its turns. Built in a
  local dir (the real one, or a temp dir uploaded when run.dir is remote)."""
  with io.LocalDir(io.join(run_dir, HF_SOURCE)) as out:
    src = out.path
    for name in ("config.json", "generation_config.json"):
      if os.path.exists(os.path.join(model_dir, name)):
        shutil.copyfile(os.path.join(model_dir, name), os.path.join(src, name))
    if hf_config is not None:
      io.write_json(os.path.join(src, "config.json"), hf_config, sort_keys=True)
    gen_path = os.path.join(src, "generation_config.json")
    eos_id = tokenizer.eos_token_id
    if eos_id is not None:
      if os.path.exists(gen_path):
        gen = io.read_json(gen_path)
      else:  # what transformers derives from config.json
        base = io.read_json(os.path.join(src, "config.json"))
        gen = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if base.get(k) is not None}
      old = eos_ids(gen)
      if eos_id not in old:
        gen["eos_token_id"] = old + [eos_id]
        io.write_json(gen_path, gen, sort_keys=True)
    tokenizer.save_pretrained(src)


def hf_source_dir(run_dir: str) -> str:
  """A local directory holding RUN_DIR/hf_source (a download when the run dir is remote)."""
  return io.local_copy(io.join(run_dir, HF_SOURCE))


def read_hf_config(run_dir: str) -> dict[str, Any]:
  return io.read_json(io.join(run_dir, HF_SOURCE, "config.json"))


def truncate_jsonl(p: str, step: int) -> None:
  """Drops the rows of a JSON-lines log whose "step" is past `step` (and a torn last line)."""
  if io.exists(p):
    io.write_text(p, "".join(line + "\n" for line, row in io.jsonl_lines(p) if row.get("step", 0) <= step))


def truncate_logs(run_dir: str, step: int) -> None:
  """Drops metrics and sample rows past `step` (written by a run killed after its last checkpoint): a
  resumed run logs them again."""
  for name in (METRICS, SAMPLES):
    truncate_jsonl(io.join(run_dir, name), step)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  p = io.join(run_dir, METRICS)
  return io.read_jsonl(p) if io.exists(p) else []

