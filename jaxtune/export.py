"""`jaxtune export`: an Orbax checkpoint of a run -> a Hugging Face model directory.

Params are restored sharded over every local device (never whole on one), then
written tensor by tensor by the streaming HF exporter. A LoRA run is rebuilt as
its base model (from `model.path`) plus the checkpoint's adapters; export merges
the adapters into the base weights, or with `adapter_only` writes a PEFT adapter.
"""

from __future__ import annotations

import json
import os

import jax
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune import rundir
from jaxtune.config import Config, compute_dtype, jnp_dtype
from jaxtune.errors import UsageError
from jaxtune.models.lora import attach_lora
from jaxtune.train import checkpoint as ckpt_lib


def load_run_config(run_dir: str) -> Config:
  return Config.from_dict(rundir.read_config(run_dir))


def _abstract_on(tree, mesh):
  shardings = mesh_lib.state_shardings(tree, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def restore_model(run_dir: str, step: int | None = None, *, mesh=None, dtype: str | None = None
                  ) -> tuple[nnx.Module, dict, int]:
  """The model of a run at `step` (latest good one by default), params sharded on `mesh`, computing in
  `dtype` (a model.dtype value; default the run's); a LoRA run's model carries its (unmerged) adapters."""
  from jaxtune.models import ModelConfig, build_model
  from jaxtune.weights.hf_load import load_pretrained

  cfg = load_run_config(run_dir)
  hf_config = rundir.read_hf_config(run_dir)
  mesh = mesh or mesh_lib.make_mesh(data=1, fsdp=-1, tensor=1)
  dtype, param_dtype = compute_dtype(dtype or cfg.model.dtype), jnp_dtype(cfg.model.param_dtype)
  with jax.set_mesh(mesh):
    if cfg.lora.rank > 0:  # frozen base weights from the source model, adapters from the checkpoint
      model = load_pretrained(cfg.model.path, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
      if hf_config.get("vocab_size", 0) > model.config.vocab_size:  # grown in training for added tokens
        from jaxtune.models.resize import resize_vocab
        resize_vocab(model, hf_config["vocab_size"])
      attach_lora(model, cfg.lora, seed=cfg.train.seed, mesh=mesh)
      adapters, meta, step = ckpt_lib.restore_params(run_dir, _abstract_on(nnx.state(model, nnx.LoRAParam), mesh),
                                                     step)
      nnx.update(model, adapters)
    else:
      mcfg = ModelConfig.from_hf(hf_config)
      abs_model = nnx.eval_shape(lambda: build_model(mcfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
      graphdef, abs_params, abs_rest = nnx.split(abs_model, nnx.Param, ...)
      if jax.tree.leaves(abs_rest):
        raise NotImplementedError("the model holds non-parameter state that export does not restore")
      params, meta, step = ckpt_lib.restore_params(run_dir, _abstract_on(abs_params, mesh), step)
      model = nnx.merge(graphdef, params, abs_rest)
  model.hf_config = hf_config
  return model, meta, step


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
               adapter_only: bool = False) -> str:
  from transformers import AutoTokenizer

  from jaxtune.models.lora import has_lora, merge_lora
  from jaxtune.weights.hf_export import save_pretrained

  model, _, step = restore_model(run_dir, step)
  src = rundir.hf_source_dir(run_dir)  # a download when run_dir is remote
  tokenizer = AutoTokenizer.from_pretrained(src)
  if adapter_only:
    if not has_lora(model):
      raise UsageError(f"--adapter-only: {run_dir} is a full fine-tune (lora.rank = 0), it has no adapter")
    write_peft_adapter(model, load_run_config(run_dir), out_dir, tokenizer)
    return out_dir
  merge_lora(model)
  save_pretrained(model, out_dir, tokenizer=tokenizer, dtype=None if dtype is None else jnp_dtype(dtype),
                  source_dir=src)
  return out_dir
