"""Streaming safetensors load: errors that name the tensor, dtypes, shardings."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from jaxtune import mesh as mesh_lib
from jaxtune.errors import CheckpointError
from jaxtune.weights import load_pretrained
from tests.helpers.hf_models import cached_tiny_hf, hf_logits, make_tiny_hf, rel_err


@pytest.fixture(scope="module")
def llama():
  return cached_tiny_hf("llama", tie=False)


@pytest.fixture
def ckpt_copy(llama, tmp_path):
  """A writable copy of the sharded tiny Llama checkpoint."""
  out = tmp_path / "copy"
  shutil.copytree(llama[0], out)
  return out


def _edit(d, fn):
  """Applies fn(tensors: dict) to the shard that holds each touched tensor; fixes the index."""
  index_file = d / "model.safetensors.index.json"
  index = json.loads(index_file.read_text())
  wm = index["weight_map"]
  for fname in sorted(set(wm.values())):
    tensors = load_file(d / fname)
    before = set(tensors)
    fn(tensors, fname)
    save_file(tensors, d / fname, metadata={"format": "pt"})
    for k in before - set(tensors):
      del wm[k]
    for k in set(tensors) - before:
      wm[k] = fname
  index_file.write_text(json.dumps(index))


def test_missing_tensor_is_named(ckpt_copy):
  _edit(ckpt_copy, lambda t, f: t.pop("model.layers.1.mlp.up_proj.weight", None))
  with pytest.raises(CheckpointError, match=r"missing tensors: \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
    load_pretrained(ckpt_copy)


def test_misshaped_tensor_is_named_with_shapes(ckpt_copy):
  key = "model.layers.0.self_attn.k_proj.weight"

  def shrink(t, f):
    if key in t:
      t[key] = t[key][:16]

  _edit(ckpt_copy, shrink)
  with pytest.raises(CheckpointError, match=r"k_proj\.weight.*shape \(16, 64\), expected \(32, 64\)"):
    load_pretrained(ckpt_copy)


def test_unexpected_tensor_is_named(ckpt_copy):
  added = []

  def add(t, f):
    if not added:
      t["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float32)
      added.append(f)

  _edit(ckpt_copy, add)
  with pytest.raises(CheckpointError, match=r"unexpected tensors: \['model\.layers\.0\.self_attn\.extra\.weight'\]"):
    load_pretrained(ckpt_copy)


def test_pickle_only_dir_is_refused(llama, tmp_path):
  (tmp_path / "config.json").write_text((llama[0] / "config.json").read_text())
  (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
  with pytest.raises(CheckpointError, match="pickle checkpoints are not loaded"):
    load_pretrained(tmp_path)


def test_unsupported_architecture_lists_supported(llama, tmp_path):
  shutil.copytree(llama[0], tmp_path / "m")
  cfg = json.loads((tmp_path / "m" / "config.json").read_text())
  cfg.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
  (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"unsupported architecture.*LlamaForCausalLM.*Gemma3ForCausalLM"):
    load_pretrained(tmp_path / "m")


def test_missing_local_dir_is_not_sent_to_the_hub(tmp_path):
  with pytest.raises(FileNotFoundError):
    load_pretrained(tmp_path / "no" / "such" / "dir")


def test_single_file_and_bf16_checkpoint(tmp_path):
  import torch
  path, hf = make_tiny_hf(tmp_path, "qwen3", max_shard_size="10GB")
  hf = hf.to(torch.bfloat16)
  hf.save_pretrained(path, max_shard_size="10GB")
  assert (path / "model.safetensors").exists() and not (path / "model.safetensors.index.json").exists()
  model = load_pretrained(path)  # params float32 by default
  want = hf.state_dict()["model.layers.1.self_attn.q_proj.weight"].float().numpy().T
  got = model.model.layers[1].self_attn.q_proj.kernel[...]
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), want)
  bf = load_pretrained(path, param_dtype="bfloat16", dtype="bfloat16")
  assert bf.model.embed_tokens.embedding[...].dtype == jnp.bfloat16 and bf.dtype == jnp.bfloat16


def forward(model, ids):
  """Jitted logits (one compile instead of many eager ones)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids)


def _specs(model):
  """Dotted param path -> the sharding of its array."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {".".join(map(str, p)): v.get_value().sharding for p, v in flat}


def test_one_device_mesh_same_logits_and_named_shardings(llama):
  path, hf = llama
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 160, (2, 24)), jnp.int32)
  plain = load_pretrained(path)
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  model = load_pretrained(path, mesh=mesh)
  for name, s in _specs(model).items():
    assert isinstance(s, NamedSharding) and s.mesh.shape == mesh.shape, name
  with jax.set_mesh(mesh):
    out = forward(model, ids)
  np.testing.assert_allclose(np.asarray(out), np.asarray(forward(plain, ids)), rtol=0, atol=1e-6)
  assert rel_err(out, hf_logits(hf, np.asarray(ids))) <= 1e-4


def test_2x2x2_mesh_shardings_and_logits(llama):
  path, hf = llama
  mesh = mesh_lib.make_mesh(2, 2, 2, devices=jax.devices()[:8])
  model = load_pretrained(path, mesh=mesh)
  specs = {k: s.spec for k, s in _specs(model).items()}
  assert specs["model.embed_tokens.embedding"] == P("tensor", "fsdp")
  assert specs["model.layers.0.self_attn.q_proj.kernel"] == P("fsdp", "tensor")
  assert specs["model.layers.0.self_attn.k_proj.kernel"] == P("fsdp", "tensor")
  assert specs["model.layers.0.self_attn.o_proj.kernel"] == P("tensor", "fsdp")
  assert specs["model.layers.1.mlp.down_proj.kernel"] == P("tensor", "fsdp")
  assert specs["lm_head.kernel"] == P("fsdp", "tensor")
  assert specs["model.norm.weight"] in (P(), P(None))
  q = model.model.layers[0].self_attn.q_proj.kernel[...]
  assert {s.data.shape for s in q.addressable_shards} == {(32, 32)}
  # each shard holds its slice of the HF weight (transposed)
  want = hf.state_dict()["model.layers.0.self_attn.q_proj.weight"].numpy().T
  for s in q.addressable_shards:
    np.testing.assert_array_equal(np.asarray(s.data), want[s.index])
  ids = jnp.asarray(np.random.RandomState(0).randint(0, 160, (4, 24)), jnp.int32)
  with jax.set_mesh(mesh):
    out = forward(model, ids)
  assert rel_err(out, hf_logits(hf, np.asarray(ids))) <= 1e-4
  np.testing.assert_allclose(np.asarray(out), np.asarray(forward(load_pretrained(path), ids)), rtol=0,
                             atol=1e-5 * float(np.abs(np.asarray(out)).max()))
