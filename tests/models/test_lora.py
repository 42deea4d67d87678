"""LoRA: a fresh adapter changes nothing, training moves only adapters, export merges them (and PEFT layout)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import OptimCfg
from jaxtune.models import build_model
from jaxtune.models.lora import add_lora
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step
from tests.helpers.cli import chat_records, jaxtune
from tests.helpers.hf_models import make_tiny_chat_model
from tests.train.test_step import CFG, packed_batch

ALL = ("q", "k", "v", "o", "gate", "up", "down")


def test_zero_b_gives_base_logits():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  ids = jnp.asarray(packed_batch(0)["input_ids"])
  base = np.asarray(model(ids))
  add_lora(model, rank=4, alpha=8.0, targets=ALL, rngs=nnx.Rngs(1))
  assert np.array_equal(np.asarray(model(ids)), base)


def test_training_moves_only_adapters():
  mesh = mesh_lib.make_mesh(1, 1, 1)
  with jax.set_mesh(mesh):
    model = build_model(CFG, rngs=nnx.Rngs(0))
    add_lora(model, rank=4, alpha=8.0, targets=("q", "v", "down"), rngs=nnx.Rngs(1))
    base_before = [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Not(nnx.LoRAParam)))]
    tx, schedule = make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0), 5)
    graphdef, state = init_state(model, tx)
    n_lora = sum(x.size for x in jax.tree.leaves(state.params))
    assert n_lora == 2 * (4 * (32 + 32) + 4 * (32 + 16) + 4 * (64 + 32))  # 2 layers x (q, v, down)
    # Adam keeps two moments for the adapters and nothing for the frozen base.
    assert sum(x.size for x in jax.tree.leaves(state.opt_state)) <= 2 * n_lora + 8
    fn = jit_train_step(graphdef, tx, schedule, 1, state_shardings(state), mesh_lib.batch_sharding(mesh))
    b_before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    for s in range(3):
      state, _ = fn(state, {k: jnp.asarray(v) for k, v in packed_batch(s).items()})
  assert [np.array_equal(a, np.asarray(b)) for a, b in zip(base_before, jax.tree.leaves(state.rest))] == \
         [True] * len(base_before)
  assert not all(np.array_equal(a, np.asarray(b)) for a, b in zip(b_before, jax.tree.leaves(state.params)))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("lora")
  model_dir, tok = make_tiny_chat_model(tmp, "qwen2", template="chatml")
  data = tmp / "chat.jsonl"
  data.write_text("\n".join(chat_records(32)) + "\n")
  run = str(tmp / "run")
  jaxtune("train", f"--config=configs/tiny.py:{model_dir},{data}", f"--config.run.dir={run}",
          "--config.train.steps=4", "--config.lora.rank=4", "--config.lora.alpha=8.0", "--config.optim.lr=1e-2")
  return tmp, model_dir, run


def test_lora_export_merges_into_base(lora_run):
  import torch
  import transformers
  from safetensors.numpy import load_file

  from jaxtune.export import restore_model

  tmp, model_dir, run = lora_run
  assert os.path.getsize(os.path.join(run, "checkpoints", "4", "params")) > 0
  out = str(tmp / "merged")
  jaxtune("export", "--run", run, "--out", out)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert not [k for k in hf.state_dict() if "lora" in k]
  ids = np.asarray([[5, 9, 17, 33, 2, 41, 7, 8]], np.int32)
  with torch.no_grad():
    ref = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  model, _, _ = restore_model(run)  # base + unmerged adapters
  got = np.asarray(model(ids))
  assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
  base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  with torch.no_grad():
    assert np.abs(base(torch.tensor(ids, dtype=torch.long)).logits.numpy() - ref).max() > 1e-4

  # The PEFT adapter: base + (alpha / r) * B @ A reproduces every merged weight.
  ad = str(tmp / "adapter")
  jaxtune("export", "--run", run, "--out", ad, "--adapter-only")
  conf = json.load(open(os.path.join(ad, "adapter_config.json")))
  assert conf["peft_type"] == "LORA" and conf["r"] == 4 and conf["lora_alpha"] == 8.0
  tensors = load_file(os.path.join(ad, "adapter_model.safetensors"))
  merged, base_sd = hf.state_dict(), base.state_dict()
  checked = 0
  for key in tensors:
    if key.endswith("lora_A.weight"):
      name = key[len("base_model.model."):-len(".lora_A.weight")] + ".weight"
      a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
      want = base_sd[name].numpy() + conf["lora_alpha"] / conf["r"] * (b @ a)
      np.testing.assert_allclose(merged[name].numpy(), want, rtol=1e-5, atol=1e-6)
      checked += 1
  assert checked == 7 * base.config.num_hidden_layers  # every projection of every layer
