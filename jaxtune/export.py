"""`jaxtune export`: an Orbax checkpoint of a run -> a Hugging Face model directory.

Params are restored sharded over every local device (never whole on one), then
written tensor by tensor by the streaming HF exporter. A LoRA run is rebuilt as
its base model (from `model.path`) plus the checkpoint's adapters; export merges
the adapters into the base weights, or with `adapter_only` writes a PEFT adapter.

The output never destroys anything by surprise: a non-empty `--out` is refused
unless `overwrite` (and even then only when it looks like a model directory); an
`--out` that is, holds or lies inside the run dir, `model.path` (a LoRA run's
base weights) or the teacher is refused; the files are written into a temporary
sibling that replaces `--out` only once complete (`io.staged_dir`).
"""

from __future__ import annotations

import json
import os

import jax
from flax import nnx

from jaxtune import io
from jaxtune import mesh as mesh_lib
from jaxtune import rundir
from jaxtune.config import Config, compute_dtype, jnp_dtype, quantize_format
from jaxtune.errors import UsageError
from jaxtune.models.lora import attach_lora
from jaxtune.train import checkpoint as ckpt_lib


def load_run_config(run_dir: str) -> Config:
  d = rundir.read_config(run_dir)
  d.setdefault("model", {}).setdefault("scan_layers", False)  # runs from before the key were unrolled
  return Config.from_dict(d)


def _abstract_on(tree, mesh):
  shardings = mesh_lib.state_shardings(tree, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def restore_model(run_dir: str, step: int | None = None, *, mesh=None, dtype: str | None = None
                  ) -> tuple[nnx.Module, dict, int]:
  """The model of a run at `step` (latest good one by default), params sharded on `mesh`, computing in
  `dtype` (a model.dtype value; default the run's); a LoRA run's model carries its (unmerged) adapters."""
  from jaxtune.models import ModelConfig, build_model
  from jaxtune.weights.hf_load import load_pretrained

  ckpt_lib.finished_steps(run_dir)  # a run with no checkpoint yet says so before anything else
  cfg = load_run_config(run_dir)
  hf_config = rundir.read_hf_config(run_dir)
  mesh = mesh or mesh_lib.make_mesh(data=1, fsdp=-1, tensor=1)
  dtype, param_dtype = compute_dtype(dtype or cfg.model.dtype), jnp_dtype(cfg.model.param_dtype)
  with jax.set_mesh(mesh):
    if cfg.lora.rank > 0:  # frozen base weights from the source model, adapters from the checkpoint
      model = load_pretrained(cfg.model.path, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                              scan_layers=cfg.model.scan_layers, quantize=quantize_format(cfg))
      if hf_config.get("vocab_size", 0) > model.config.vocab_size:  # grown in training for added tokens
        from jaxtune.models.resize import resize_vocab
        resize_vocab(model, hf_config["vocab_size"])
      attach_lora(model, cfg.lora, seed=cfg.train.seed, mesh=mesh)
      adapters, meta, step = ckpt_lib.restore_params(run_dir, _abstract_on(nnx.state(model, nnx.LoRAParam), mesh),
                                                     step)
      nnx.update(model, adapters)
    else:
      mcfg = ModelConfig.from_hf(hf_config)
      abs_model = nnx.eval_shape(lambda: build_model(mcfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
                                                     scan_layers=cfg.model.scan_layers))
      graphdef, abs_params, abs_rest = nnx.split(abs_model, nnx.Param, ...)
      if jax.tree.leaves(abs_rest):
        raise NotImplementedError("the model holds non-parameter state that export does not restore")
      params, meta, step = ckpt_lib.restore_params(run_dir, _abstract_on(abs_params, mesh), step)
      model = nnx.merge(graphdef, params, abs_rest)
  model.hf_config = hf_config
  return model, meta, step


MODEL_MARKERS = ("config.json", "adapter_config.json")  # a directory holding one of these is a model export


def check_out_dir(out_dir: str, cfg: Config, run_dir: str, *, overwrite: bool) -> None:
  """Refuses an export destination that would destroy data: the run dir, the base model or teacher
  (or a directory holding or inside one of them), the current directory or one above it, a file, a
  non-empty directory without `overwrite`, or (even with it) a non-empty directory that is not a model
  directory."""
  if io.is_remote(out_dir):
    raise UsageError(f"--out {out_dir}: export writes a local directory (copy it to {out_dir} afterwards)")
  protected = {"the run dir": run_dir, "model.path (the base model)": cfg.model.path,
               "distill.teacher": cfg.distill.teacher}
  for what, p in protected.items():
    if p and not io.is_remote(p) and os.path.exists(p) and (io.is_within(out_dir, p) or io.is_within(p, out_dir)):
      raise UsageError(f"--out {out_dir} would write over {what} {p}; choose a directory outside it")
  if io.is_within(os.getcwd(), out_dir):
    raise UsageError(f"--out {out_dir} is the current directory or holds it; choose a new directory")
  if not os.path.lexists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise UsageError(f"--out {out_dir} exists and is not a directory")
  entries = sorted(os.listdir(out_dir))
  if not entries:
    return
  if not overwrite:
    shown = ", ".join(entries[:3]) + (f" (+{len(entries) - 3} more)" if len(entries) > 3 else "")
    raise UsageError(f"--out {out_dir} is not empty ({shown}); pass --overwrite to replace it")
  if not any(m in entries for m in MODEL_MARKERS):
    raise UsageError(f"--out {out_dir} is not empty and holds no {' or '.join(MODEL_MARKERS)}: not replacing "
                     "a directory that is not a model export, even with --overwrite")


def write_peft_adapter(model, cfg: Config, out_dir: str, tokenizer=None) -> None:
  """A PEFT-format LoRA adapter: adapter_config.json + adapter_model.safetensors."""
  import numpy as np
  from safetensors.numpy import save_file

  from jaxtune.models.lora import TARGETS, peft_tensors
  from jaxtune.weights.hf_export import host_array

  tensors = {k: np.ascontiguousarray(host_array(v)) for k, v in peft_tensors(model).items()}
  if jax.process_index() != 0:
    return
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
  adapter_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": cfg.model.path,
      "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": 0.0, "bias": "none",
      "fan_in_fan_out": False, "target_modules": sorted(TARGETS[t][1] for t in cfg.lora.targets),
      "inference_mode": True,
  }
  with open(os.path.join(out_dir, "adapter_config.json"), "w", encoding="utf-8") as f:
    json.dump(adapter_config, f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(out_dir)


def export_run(run_dir: str, out_dir: str, *, step: int | None = None, dtype: str | None = None,
               adapter_only: bool = False, overwrite: bool = False) -> str:
  from jaxtune.data.tokenizer import load_tokenizer_files
  from jaxtune.models.lora import merge_lora
  from jaxtune.weights.hf_export import save_pretrained

  ckpt_lib.finished_steps(run_dir)
  cfg = load_run_config(run_dir)
  check_out_dir(out_dir, cfg, run_dir, overwrite=overwrite)
  if adapter_only and cfg.lora.rank == 0:
    raise UsageError(f"--adapter-only: {run_dir} is a full fine-tune (lora.rank = 0), it has no adapter")
  model, _, step = restore_model(run_dir, step)
  src = rundir.hf_source_dir(run_dir)  # a download when run_dir is remote
  tokenizer = load_tokenizer_files(src)
  existed = os.path.exists(out_dir)
  try:
    with io.staged_dir(out_dir, enabled=jax.process_index() == 0) as stage:
      if adapter_only:
        write_peft_adapter(model, cfg, stage, tokenizer)
      else:
        merge_lora(model)
        save_pretrained(model, stage, tokenizer=tokenizer, dtype=None if dtype is None else jnp_dtype(dtype),
                        source_dir=src)
  except OSError as e:  # a full disk, a read-only file system: the CLI prints it as one line
    raise OSError(e.errno, f"writing the export {out_dir} failed: {e.strerror or e}; "
                  + (f"{out_dir} is as it was" if existed else "nothing was left behind")) from e
  return out_dir
