"""Run setup: the resume checks (keys that decide the data order, the data layout) and the batch split."""

import dataclasses

import pytest

from jaxtune.config import Config
from jaxtune.data.pipeline import LAYOUT
from jaxtune.errors import ConfigError, TrainingError
from jaxtune.train.setup import check_batch, check_resume_config


def test_resume_refuses_a_changed_data_order_or_layout():
  cfg = Config()
  meta = {"config": cfg.to_dict(), "data_layout": LAYOUT}
  check_resume_config(cfg, meta)  # the same run: fine
  seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=3))
  with pytest.raises(TrainingError, match=r"train.seed: 0 -> 3"):
    check_resume_config(seeded, meta)
  old = {"config": cfg.to_dict()}  # a checkpoint from before best-fit packing
  with pytest.raises(TrainingError, match="data layout: 'first-fit-v0'"):
    check_resume_config(cfg, old)
  allowed = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, allow_config_change=True))
  check_resume_config(allowed, old)
  more_steps = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=500))
  check_resume_config(more_steps, meta)  # not a data-order key


def test_micro_batch_must_split_over_data_and_fsdp():
  from jaxtune.mesh import make_mesh
  cfg = Config()
  mesh = make_mesh(2, 2, 2)
  check_batch(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8, grad_accum=2)), mesh)
  with pytest.raises(ConfigError, match=r"micro-batch 2 .* mesh.data \* mesh.fsdp = 4"):
    check_batch(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8, grad_accum=4)), mesh)
