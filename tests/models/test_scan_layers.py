"""Scanned decoder blocks (`model.scan_layers`) equal unrolled ones: logits for all six families (the same HF
weights loaded both ways), losses over optimizer steps (full and LoRA, on one device and on a mesh), generation
with KV caches (full and ring), HF export (the same tensors as the unrolled export, reloading in transformers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import LoraCfg, OptimCfg
from jaxtune.generate import generate_ids
from jaxtune.models.lora import attach_lora, merge_lora, peft_tensors
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step
from jaxtune.weights.hf_export import save_pretrained
from jaxtune.weights.hf_load import load_pretrained
from tests.helpers.hf_models import FAMILIES, cached_tiny_hf, hf_logits, packed_batch, rel_err

T = 40


def batch(vocab: int, seed: int = 0):
  ids, pos, seg = packed_batch([[9, 17, 11], [30, 3], [20, 20], [5, 30]], T, vocab, seed=seed)
  mask = (np.random.RandomState(seed + 5).rand(*ids.shape) < 0.7).astype(np.int32) * (seg > 0)
  return {"input_ids": ids, "positions": pos, "segment_ids": seg, "loss_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_unrolled_and_hf(family):
  d, hf = cached_tiny_hf(family)
  unrolled, scanned = load_pretrained(d), load_pretrained(d, scan_layers=True)
  L = unrolled.config.num_layers
  for path, var in nnx.to_flat_state(nnx.state(scanned.model.layers, nnx.Param)):
    assert var.get_value().shape[0] == L and var.get_metadata()["logical_axes"][0] == "layers", path
  b = {k: jnp.asarray(v) for k, v in batch(unrolled.config.vocab_size).items()}
  args = (b["input_ids"], b["positions"], b["segment_ids"])
  ref = nnx.jit(lambda m, *a: m(*a))(unrolled, *args)
  got = nnx.jit(lambda m, *a: m(*a))(scanned, *args)
  assert rel_err(got, ref) <= 1e-6
  ids = np.asarray(b["input_ids"])[:1, :9]  # the first packed example, as HF sees it alone
  assert rel_err(scanned(jnp.asarray(ids)), hf_logits(hf, ids)) <= 1e-5


def train_losses(family: str, scan: bool, *, lora: bool = False, mesh_shape=(1, 1, 1), remat: str = "none",
                 steps: int = 2):
  d, _ = cached_tiny_hf(family)
  n = int(np.prod(mesh_shape))
  mesh = mesh_lib.make_mesh(*mesh_shape, devices=jax.devices()[:n])
  with jax.set_mesh(mesh):
    model = load_pretrained(d, mesh=mesh, scan_layers=scan, remat=remat)
    if lora:
      attach_lora(model, LoraCfg(rank=4, alpha=8.0, targets=("q", "v", "down")), seed=0, mesh=mesh)
    tx, schedule = make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0), steps)
    graphdef, state = init_state(model, tx)
    bsh = mesh_lib.batch_sharding(mesh)
    fn = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), bsh)
    losses = []
    b = {k: jax.device_put(jnp.asarray(v), bsh) for k, v in batch(model.config.vocab_size).items()}
    for _ in range(steps):
      state, m = fn(state, b)
      losses.append(float(m["loss"]))  # blocks each step (jax 0.10.2 CPU collectives)
  return losses, nnx.merge(graphdef, state.params, state.rest)


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_over_steps_equal_unrolled(family):
  (ref, _), (got, _) = train_losses(family, False), train_losses(family, True)
  assert ref[-1] < ref[0]
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_lora_and_remat_on_a_mesh_equal_unrolled():
  """LoRA adapters stacked too (the same initial draws), remat per scanned block, a (data, fsdp, tensor) mesh;
  the trained adapters export under PEFT's per-layer names with the same values."""
  ref, ref_model = train_losses("gemma2", False, lora=True)
  got, model = train_losses("gemma2", True, lora=True, mesh_shape=(2, 2, 2), remat="full")
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  a, b = peft_tensors(model), peft_tensors(ref_model)
  assert sorted(a) == sorted(b) and len(a) == 2 * 3 * ref_model.config.num_layers
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_generation_equals_unrolled(family):
  """Greedy decoding through the stacked caches (gemma3: full-layer caches and sliding-window rings, prompts
  longer than the window) gives the unrolled model's tokens."""
  d, _ = cached_tiny_hf(family)
  unrolled, scanned = load_pretrained(d), load_pretrained(d, scan_layers=True)
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(3, 160, n)) for n in (5, 13, 21)]
  cache = scanned.init_cache(2, 24)
  if family == "gemma3":
    assert cache["k"].shape[0] == 1 and cache["ring_k"].shape[0] == 2  # one full layer, two sliding
  want = generate_ids(unrolled, prompts, 12, stop_ids=[], pad_id=0)
  got = generate_ids(scanned, prompts, 12, stop_ids=[], pad_id=0)
  assert got == want and all(len(g) == 12 for g in got)


def test_export_writes_the_unrolled_tensors_and_reloads_in_transformers(tmp_path):
  import torch
  import transformers
  from safetensors.numpy import load_file
  d, _ = cached_tiny_hf("qwen2")
  _, model = train_losses("qwen2", True, lora=True, steps=2)
  merge_lora(model)
  out_s, out_u = save_pretrained(model, tmp_path / "scanned"), tmp_path / "unrolled"
  reloaded = load_pretrained(out_s)  # unrolled from the scanned export
  save_pretrained(reloaded, out_u)
  ts, tu = load_file(str(out_s / "model.safetensors")), load_file(str(out_u / "model.safetensors"))
  assert list(ts) == list(tu) and all(np.array_equal(ts[k], tu[k]) for k in ts)
  assert "model.layers.2.self_attn.q_proj.weight" in ts
  hf = transformers.AutoModelForCausalLM.from_pretrained(out_s, dtype=torch.float32)
  ids = np.asarray(batch(model.config.vocab_size)["input_ids"])[:1, :9]
  assert rel_err(model(jnp.asarray(ids)), hf_logits(hf, ids)) <= 1e-5


def test_resume_refuses_another_layout():
  from jaxtune.config import Config, default_config
  from jaxtune.errors import TrainingError
  from jaxtune.train.setup import check_resume_config
  cfg = Config.from_dict(default_config().to_dict())
  assert cfg.model.scan_layers
  from jaxtune.data.pipeline import LAYOUT
  old = cfg.to_dict()
  del old["model"]["scan_layers"]  # a run from before the key: unrolled
  with pytest.raises(TrainingError, match="scan_layers=False"):
    check_resume_config(cfg, {"config": old, "data_layout": LAYOUT})
  check_resume_config(cfg, {"config": cfg.to_dict(), "data_layout": LAYOUT})
