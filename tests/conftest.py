"""Test-wide set-up: 8 fake CPU devices (set before jax is imported) and float32 everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers.fake_gcs import gcs  # noqa: E402,F401 - the `gcs` fixture, for every test module

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """The one tiny trained run tests share (tests/helpers/runs.py)."""
  from tests.helpers.runs import train_tiny_run
  return train_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def tiny_dpo(tmp_path_factory):
  """A tiny model and preference pairs (no training) for DPO tests (tests/helpers/runs.py)."""
  from tests.helpers.runs import make_tiny_dpo
  return make_tiny_dpo(tmp_path_factory.mktemp("tiny_dpo"))
