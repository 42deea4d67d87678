"""`jaxtune export`: an Orbax checkpoint of a run -> a Hugging Face model directory.

Params are restored sharded over every local device (never whole on one), then
written tensor by tensor by the streaming HF exporter.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.train import checkpoint as ckpt_lib
from jaxtune.train.loop import DTYPES, HF_SOURCE


def _run_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} is not a jaxtune run dir (no config.json)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def restore_model(run_dir: str, step: int | None = None, *, mesh=None) -> tuple[nnx.Module, dict, int]:
  """The model of a run at `step` (latest good one by default), params sharded on `mesh`."""
  from jaxtune.models import ModelConfig, build_model

  run_cfg = _run_config(run_dir)
  src = os.path.join(run_dir, HF_SOURCE)
  with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
    hf_config = json.load(f)
  mcfg = ModelConfig.from_hf(hf_config)
  mesh = mesh or mesh_lib.make_mesh(data=1, fsdp=-1, tensor=1)
  param_dtype = DTYPES[run_cfg["model"]["param_dtype"]]
  dtype = DTYPES[run_cfg["model"]["dtype"]]
  with jax.set_mesh(mesh):
    abs_model = nnx.eval_shape(lambda: build_model(mcfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype))
    graphdef, abs_params, abs_rest = nnx.split(abs_model, nnx.Param, ...)
    shardings = mesh_lib.state_shardings(abs_params, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_params, shardings)
    params, meta, step = ckpt_lib.restore_params(run_dir, target, step)
    # The non-trainable rest (if any) is rebuilt from the config, never stored.
    model = build_model(mcfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    model = nnx.merge(graphdef, params, rest)
  model.hf_config = hf_config
  return model, meta, step


def export_run(run_dir: str, out_dir: str, *, step: int | None = None, dtype: str | None = None) -> str:
  from transformers import AutoTokenizer

  from jaxtune.weights.hf_export import save_pretrained

  model, _, step = restore_model(run_dir, step)
  src = os.path.join(run_dir, HF_SOURCE)
  tokenizer = AutoTokenizer.from_pretrained(src)
  save_pretrained(model, out_dir, tokenizer=tokenizer, dtype=None if dtype is None else DTYPES[dtype],
                  source_dir=src)
  return out_dir
