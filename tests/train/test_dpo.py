"""DPO and its relatives: each loss against its formula, sequence log-probs (packed == unpacked ==
transformers), the step's invariants (ln 2 at the start, accumulation, cached == live, LoRA reference ==
base, meshes), and runs through the CLI (cache reuse, bit-exact resume, loss falls)."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune import mesh as mesh_lib
from jaxtune.config import OptimCfg
from jaxtune.data import packing
from jaxtune.models import build_model
from jaxtune.models.lora import add_lora
from jaxtune.train import loss as loss_lib
from jaxtune.train.objectives.base import Policy
from jaxtune.train.objectives.dpo import DPO, pair_losses
from jaxtune.train.optim import make_optimizer
from jaxtune.train.state import init_state, state_shardings
from jaxtune.train.step import jit_train_step
from tests.helpers import cli
from tests.helpers.hf_models import FAMILIES, cached_tiny_hf, hf_logits
from tests.train.test_step import CFG

# -- the losses, against numpy transcriptions of their formulas (values and gradients) --------------------


def np_logsig(x):
  return -np.logaddexp(0.0, -x)


def np_sig(x):
  return 1.0 / (1.0 + np.exp(-x))


def reference_losses(loss, pc, pr, rc, rr, nc, nr, beta, ls, gamma):
  """(loss, dloss/dpc, dloss/dpr) per pair, written out from the papers (TRL's normalisations for IPO)."""
  if loss == "sigmoid":  # DPO (Rafailov et al.), conservative DPO with label smoothing ls
    h = (pc - rc) - (pr - rr)
    value = -(1 - ls) * np_logsig(beta * h) - ls * np_logsig(-beta * h)
    d = -(1 - ls) * beta * np_sig(-beta * h) + ls * beta * np_sig(beta * h)
    return value, d, -d
  if loss == "hinge":  # SLiC
    h = (pc - rc) - (pr - rr)
    value = np.maximum(0.0, 1 - beta * h)
    d = np.where(1 - beta * h > 0, -beta, 0.0)
    return value, d, -d
  if loss == "ipo":  # IPO (Azar et al.), log-ratios per completion token
    u = (pc - rc) / nc - (pr - rr) / nr
    value = (u - 1 / (2 * beta)) ** 2
    return value, 2 * (u - 1 / (2 * beta)) / nc, -2 * (u - 1 / (2 * beta)) / nr
  if loss == "simpo":  # SimPO (Meng et al.)
    z = beta * (pc / nc - pr / nr) - gamma
    value = -(1 - ls) * np_logsig(z) - ls * np_logsig(-z)
    dz = -(1 - ls) * np_sig(-z) + ls * np_sig(z)
    return value, dz * beta / nc, -dz * beta / nr
  if loss == "orpo":  # ORPO (Hong et al.): odds ratio of the mean log-probs (the NLL term is added apart)
    ac, ar = pc / nc, pr / nr
    lo = lambda a: a - np.log1p(-np.exp(a))  # noqa: E731 - log odds of p = e^a
    delta = lo(ac) - lo(ar)
    value = -beta * np_logsig(delta)
    g = -beta * np_sig(-delta)
    return value, g / (1 - np.exp(ac)) / nc, -g / (1 - np.exp(ar)) / nr
  raise ValueError(loss)


@pytest.mark.parametrize("loss, ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0),
                                      ("simpo", 0.0), ("simpo", 0.2), ("orpo", 0.0)])
def test_pair_losses_match_their_formulas(loss, ls):
  rng = np.random.default_rng(0)
  n = 64
  nc, nr = rng.integers(1, 30, n).astype(np.float64), rng.integers(1, 30, n).astype(np.float64)
  pc, pr = -rng.uniform(0.05, 3, n) * nc, -rng.uniform(0.05, 3, n) * nr
  rc, rr = pc + rng.normal(0, 2, n), pr + rng.normal(0, 2, n)
  beta, gamma = 0.3, 0.4
  f = lambda pc, pr: pair_losses(loss, pc, pr, rc, rr, nc, nr, beta=beta, label_smoothing=ls,  # noqa: E731
                                 simpo_gamma=gamma)[0]
  with jax.enable_x64(True):
    value = np.asarray(f(jnp.asarray(pc), jnp.asarray(pr)))
    g_c, g_r = jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))(jnp.asarray(pc), jnp.asarray(pr))
  want, want_c, want_r = reference_losses(loss, pc, pr, rc, rr, nc, nr, beta, ls, gamma)
  np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(g_c), want_c, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(np.asarray(g_r), want_r, rtol=1e-10, atol=1e-12)


# -- sequence log-probs: packed == unpacked == transformers, on all six families --------------------------


def random_pairs(vocab, n=3, seed=0):
  """n units of (chosen, rejected): a shared random prompt, then a random reply each, reply tokens trained."""
  rng = np.random.default_rng(seed)
  units = []
  for u in range(n):
    prompt = rng.integers(3, vocab, int(rng.integers(3, 9))).astype(np.int32)
    sides = []
    for k in range(2):
      reply = rng.integers(3, vocab, int(rng.integers(2, 7))).astype(np.int32)
      ids = np.concatenate([prompt, reply])
      mask = np.r_[np.zeros(len(prompt)), np.ones(len(reply))].astype(np.int32)
      sides.append((2 * u + k, ids, mask))
    units.append(sides)
  return units


def slot_logps(batch, logp_BS):
  """{stored sequence id: log-prob} from per-slot values."""
  sel = batch["seq_ids"] >= 0
  return dict(zip(batch["seq_ids"][sel].tolist(), np.asarray(logp_BS)[sel].tolist()))


@pytest.mark.parametrize("family", FAMILIES)
def test_sequence_logps_packed_unpacked_and_transformers(family):
  import jaxtune
  hf_dir, hf_model = cached_tiny_hf(family)
  model = jaxtune.load_pretrained(hf_dir)
  units = random_pairs(model.config.vocab_size, seed=FAMILIES.index(family))
  packed = packing.pack_units(units, 48, packing=True, segments=6)
  unpacked = packing.pack_units(units, 48, packing=False, segments=1)
  assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
  got = {}
  for name, rows in (("packed", packed), ("unpacked", unpacked)):
    logp_BS, _ = loss_lib.sequence_logps(model, {k: jnp.asarray(v) for k, v in rows.items()},
                                         rows["seq_ids"].shape[1])
    got[name] = slot_logps(rows, logp_BS)
  for sid, ids, mask in (s for u in units for s in u):  # transformers, one sequence at a time
    logits = hf_logits(hf_model, ids[None])[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t])
    np.testing.assert_allclose(got["packed"][sid], got["unpacked"][sid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["packed"][sid], want, rtol=1e-5, atol=1e-4)


def test_chunked_sequence_logps_equal_full():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  rows = packing.pack_units(random_pairs(CFG.vocab_size, n=4), 40, packing=True, segments=8)
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  full, n_full = loss_lib.sequence_logps(model, batch, 8)
  chunked, n_chunked = loss_lib.sequence_logps(model, batch, 8, chunk=7)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(full), rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(n_chunked), np.asarray(n_full))


# -- the step: ln 2 at the start, accumulation, cached == live, LoRA reference == base, meshes ---------------


def pair_batch(model, n_units=8, seed=0, with_ref=True):
  rows = packing.pack_units(random_pairs(CFG.vocab_size, n=n_units, seed=seed), 40, packing=False, segments=1)
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  if with_ref:  # the reference = the model itself, as at the start of training
    logp, _ = loss_lib.sequence_logps(model, batch, 1)
    batch["ref_logps"] = logp
  return batch


def make_step(objective, grad_accum=1, mesh_shape=(1, 1, 1), lora=False):
  mesh = mesh_lib.make_mesh(*mesh_shape)
  with jax.set_mesh(mesh):
    model = build_model(CFG, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.device_put(params, mesh_lib.state_shardings(params, mesh)))
    if lora:
      add_lora(model, rank=4, alpha=8.0, targets=("q", "v", "up"), rngs=nnx.Rngs(1))
    frozen = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if objective.has_frozen else None
    tx, schedule = make_optimizer(OptimCfg(lr=1e-3, warmup_steps=0, schedule="constant"), 10)
    batch = pair_batch(model)
    graphdef, state = init_state(model, tx)
    fn = jit_train_step(graphdef, tx, schedule, grad_accum, state_shardings(state), mesh_lib.batch_sharding(mesh),
                        objective=objective,
                        frozen_shardings=jax.tree.map(lambda x: x.sharding, frozen) if frozen is not None else None)
  return mesh, fn, state, frozen, batch, graphdef


def run_steps(setup, steps=3):
  mesh, fn, state, frozen, batch, _ = setup
  metrics = []
  with jax.set_mesh(mesh):
    for _ in range(steps):
      args = (frozen,) if frozen is not None else ()
      state, m = fn(state, jax.device_put(batch, mesh_lib.batch_sharding(mesh)), *args)
      metrics.append({k: float(v) for k, v in m.items()})
  return state, metrics


def test_first_sigmoid_loss_is_ln2_and_rewards_are_zero():
  setup = make_step(DPO(loss_type="sigmoid", beta=0.1))
  state, metrics = run_steps(setup, steps=4)
  first = metrics[0]
  assert abs(first["loss"] - np.log(2)) <= 1e-6, first
  for k in ("rewards_chosen", "rewards_rejected", "reward_margin"):
    assert abs(first[k]) <= 1e-6, (k, first)
  assert metrics[-1]["loss"] < first["loss"] and 0 <= metrics[-1]["reward_accuracy"] <= 1
  assert setup[1]._cache_size() == 1  # compiled once


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "orpo"])
def test_grad_accumulation_equals_full_batch(loss):
  a, b = make_step(DPO(loss_type=loss, sft_weight=0.5)), make_step(DPO(loss_type=loss, sft_weight=0.5), grad_accum=4)
  sa, ma = run_steps(a)
  sb, mb = run_steps(b)
  for x, y in zip(ma, mb):
    for k in x:
      np.testing.assert_allclose(y[k], x[k], rtol=2e-5, atol=1e-6, err_msg=k)
  for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_cached_and_live_references_give_the_same_losses():
  _, cached = run_steps(make_step(DPO(reference="cached")))
  live_setup = make_step(DPO(reference="live"))
  assert live_setup[3] is not None  # full fine-tuning: a frozen copy of the starting params
  _, live = run_steps(live_setup)
  for x, y in zip(cached, live):
    for k in ("loss", "reward_margin", "rewards_chosen", "rewards_rejected", "grad_norm"):
      np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_lora_reference_is_the_base_model():
  _, _, state, frozen, batch, graphdef = make_step(DPO(reference="live", lora=True), lora=True)
  assert frozen is None  # no copy of the weights: the adapters are zeroed instead
  base = build_model(CFG, rngs=nnx.Rngs(0))
  want, _ = loss_lib.sequence_logps(base, batch, 1)
  trained = jax.tree.map(lambda x: x + 0.3, state.params)  # adapters far from zero: the policy moved
  policy = Policy(graphdef, trained, state.rest)
  moved, _ = loss_lib.sequence_logps(policy(), batch, 1)
  assert np.abs(np.asarray(moved) - np.asarray(want)).max() > 1e-3
  ref = DPO(reference="live", lora=True)._reference_logps(policy, batch, None)
  np.testing.assert_allclose(np.asarray(ref), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_meshes_equal_one_device(shape):
  _, ref = run_steps(make_step(DPO()))
  _, got = run_steps(make_step(DPO(), mesh_shape=shape))
  for x, y in zip(ref, got):
    for k in ("loss", "reward_margin", "grad_norm"):
      np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-6, err_msg=k)


# -- through the CLI: the cache, kill -9 resume, learning ----------------------------------------------------


def reference_line(stdout):
  line = next(l for l in stdout.splitlines() if l.startswith("reference log-probs:") and "computed" in l)
  computed, reused = (int(x) for x in line.split(":")[1].replace("sequences computed,", "").split("reused")[0].split())
  return computed, reused


@pytest.fixture(scope="module")
def dpo_runs(tiny_dpo, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("dpo_runs")
  env_cache = str(tmp / "cache")
  args = lambda run, *extra: ("train", tiny_dpo.config, f"--config.run.dir={run}",  # noqa: E731
                              f"--config.data.cache_dir={env_cache}", "--config.train.steps=10",
                              "--config.checkpoint.every=4", "--config.train.log_every=1", "--config.optim.lr=3e-4",
                              "--config.train.eval_every=5", f"--config.data.eval=('{tiny_dpo.data}',)", *extra)
  ref = cli.jaxtune(*args(str(tmp / "ref")))
  return tmp, args, ref


def test_run_computes_the_reference_once_and_learns(dpo_runs, tiny_dpo):
  tmp, _, ref = dpo_runs
  # each side of each train pair once; the eval pairs are the same pairs: found by content, not recomputed
  assert reference_line(ref.stdout) == (2 * tiny_dpo.pairs, 2 * tiny_dpo.pairs)
  rows = cli.metrics(str(tmp / "ref"))
  assert [r["step"] for r in rows] == list(range(1, 11))
  first, last = rows[0], rows[-1]
  assert abs(first["loss"] - np.log(2)) < 1e-5
  for k in ("reward_accuracy", "reward_margin", "rewards_chosen", "rewards_rejected", "logps_chosen",
            "logps_rejected", "lr", "grad_norm", "tokens_per_s", "mfu"):
    assert k in last, k
  assert last["loss"] < first["loss"] - 0.05 and last["reward_accuracy"] >= 0.9 and last["reward_margin"] > 0
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [5, 10] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
  assert 0 <= evals[1]["eval_reward_accuracy"] <= 1 and "eval_rewards_chosen" in evals[1]


def test_kill_then_resume_is_bit_exact_and_reuses_the_cache(dpo_runs):
  tmp, args, _ = dpo_runs
  run = str(tmp / "killed")
  proc = cli.start(*args(run), log_path=str(tmp / "killed.log"))
  from tests.train.test_resume import params_of, wait_for
  wait_for(lambda: os.path.exists(os.path.join(run, "checkpoints", "4", "_CHECKPOINT_METADATA")), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert reference_line(open(tmp / "killed.log").read()) == (0, 160)  # a new run dir, the same cache
  resumed = cli.jaxtune(*args(run))
  assert "resumed from" in resumed.stdout and reference_line(resumed.stdout)[0] == 0
  (step_a, pa), (step_b, pb) = params_of(str(tmp / "ref")), params_of(run)
  assert step_a == step_b == 10 and all(np.array_equal(x, y) for x, y in zip(pa, pb))
  la = {r["step"]: r for r in cli.metrics(str(tmp / "ref"))}
  lb = {r["step"]: r for r in cli.metrics(run)}
  assert la.keys() == lb.keys()
  for s in la:
    assert la[s]["loss"] == lb[s]["loss"] and la[s]["reward_margin"] == lb[s]["reward_margin"]


def test_another_batch_size_and_packing_reuse_the_cache(dpo_runs):
  tmp, args, _ = dpo_runs
  p = cli.jaxtune(*args(str(tmp / "other"), "--config.train.batch_size=6", "--config.data.packing=False",
                        "--config.train.steps=2"))
  assert reference_line(p.stdout)[0] == 0
  rows = cli.metrics(str(tmp / "other"))
  assert abs(rows[0]["loss"] - np.log(2)) < 1e-5


def test_dpo_needs_preference_data(tiny_run, tmp_path):
  run = f"--config.run.dir={tmp_path / 'run'}"
  p = cli.jaxtune("train", tiny_run.config, run, "--config.train.objective=dpo", "--config.data.train=("
                  f"{{'path': '{tiny_run.data}', 'format': 'messages'}},)", check=False)
  assert p.returncode == 1 and "preference" in p.stderr and "Traceback" not in p.stderr
  p = cli.jaxtune("train", tiny_run.config, run, "--config.train.objective=dpo", check=False)  # format auto: SFT records
  assert p.returncode == 1 and "not_a_pair" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_held_out_fraction_of_pairs(tiny_dpo, tmp_path):
  """data.eval_fraction splits one store of pairs: each split gets the reference log-probs of its own pairs."""
  run = tmp_path / "run"
  p = cli.jaxtune("train", tiny_dpo.config, f"--config.run.dir={run}", f"--config.data.cache_dir={tmp_path}/c",
                  "--config.data.eval_fraction=0.25", "--config.train.eval_every=2", "--config.train.steps=2",
                  "--config.checkpoint.every=0")
  computed, reused = reference_line(p.stdout)  # held-out copies of train sequences are found by content
  assert computed + reused == 2 * tiny_dpo.pairs and computed > reused
  last = cli.metrics(str(run))[-1]
  assert last["step"] == 2 and 0 <= last["eval_reward_accuracy"] <= 1 and abs(last["eval_loss"] - np.log(2)) < 0.1


def test_lora_dpo_reuses_the_base_reference_and_exports(dpo_runs):
  """With LoRA the reference is the base model: the full fine-tune's cached log-probs serve (the fingerprint
  covers the base weights, not the adapters); the adapters export merged or as a PEFT adapter."""
  tmp, args, _ = dpo_runs
  run = str(tmp / "lora")
  p = cli.jaxtune(*args(run, "--config.lora.rank=4", "--config.train.steps=3", "--config.train.eval_every=0",
                        "--config.data.eval=()", "--config.checkpoint.every=0"))
  assert reference_line(p.stdout)[0] == 0
  rows = cli.metrics(run)
  assert abs(rows[0]["loss"] - np.log(2)) < 1e-5 and rows[-1]["loss"] < rows[0]["loss"]
  cli.jaxtune("export", "--run", run, "--out", str(tmp / "lora_merged"))
  cli.jaxtune("export", "--run", run, "--out", str(tmp / "lora_peft"), "--adapter-only")
  assert os.path.exists(tmp / "lora_merged" / "config.json")
  assert json.load(open(tmp / "lora_peft" / "adapter_config.json"))["r"] == 4
