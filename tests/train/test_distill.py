"""Logit distillation: the divergences against their formulas, zero when student equals teacher, the loss of
a model against a numpy transcription, chunked and packed forms equal, vocabulary checks, a CLI run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.data import packing
from jaxtune.errors import CheckpointError
from jaxtune.models import build_model
from jaxtune.train.objectives.base import Policy
from jaxtune.train.objectives.distill import Distill, check_vocab, divergence
from tests.helpers import cli
from tests.train.test_step import CFG, packed_batch


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_divergence(s, t, kind, T):
  """The formulas, in float64 numpy."""
  q, p = np_softmax(s / T), np_softmax(t / T)
  kl = lambda a, b: (a * (np.log(a) - np.log(b))).sum(-1)  # noqa: E731
  if kind == "forward_kl":
    d = kl(p, q)
  elif kind == "reverse_kl":
    d = kl(q, p)
  else:
    m = (p + q) / 2
    d = (kl(p, m) + kl(q, m)) / 2
  return d * T**2


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_divergences_match_their_formulas(kind):
  rng = np.random.default_rng(0)
  s, t = rng.normal(0, 2, (2, 3, 11)), rng.normal(0, 2, (2, 3, 11))
  T = 2.0
  with jax.enable_x64(True):
    got = np.asarray(divergence(jnp.asarray(s), jnp.asarray(t), kind, T))
    g = np.asarray(jax.grad(lambda x: divergence(x, jnp.asarray(t), kind, T).sum())(jnp.asarray(s)))
  np.testing.assert_allclose(got, np_divergence(s, t, kind, T), rtol=1e-10, atol=1e-12)
  if kind == "forward_kl":  # d/ds [T^2 KL(p || q)] = T (q - p)
    want_g = T * (np_softmax(s / T) - np_softmax(t / T))
  else:  # central differences of the numpy formula
    want_g, eps = np.zeros_like(s), 1e-6
    for idx in np.ndindex(s.shape):
      d = np.zeros_like(s)
      d[idx] = eps
      want_g[idx] = (np_divergence(s + d, t, kind, T).sum() - np_divergence(s - d, t, kind, T).sum()) / (2 * eps)
  np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-8)


def setup(alpha=0.0, kind="forward_kl", T=1.0, chunk=7, same=False):
  student = build_model(CFG, rngs=nnx.Rngs(0))
  teacher = build_model(dataclasses.replace(CFG, num_layers=3, layer_types=None), rngs=nnx.Rngs(0 if same else 5))
  if same:
    teacher = build_model(CFG, rngs=nnx.Rngs(0))
  tg, tparams = nnx.split(teacher)
  obj = Distill(temperature=T, alpha=alpha, kind=kind, chunk=chunk, teacher_graphdef=tg,
                teacher_vocab=CFG.vocab_size)
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)
  return obj, graphdef, params, rest, tparams, student, teacher


def loss_fn(obj, graphdef, rest, tparams, batch):
  def f(p):
    s, _ = obj.loss(Policy(graphdef, p, rest), batch, tparams, obj.totals(batch))
    return s / obj.totals(batch)["count"]
  return f


def test_kl_and_its_gradient_are_zero_when_student_equals_teacher():
  obj, graphdef, params, rest, tparams, *_ = setup(same=True, T=2.0)
  batch = {k: jnp.asarray(v) for k, v in packed_batch(1).items()}
  value, grads = jax.value_and_grad(loss_fn(obj, graphdef, rest, tparams, batch))(params)
  assert abs(float(value)) < 1e-6
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-6


@pytest.mark.parametrize("kind, alpha, T", [("forward_kl", 0.0, 1.0), ("reverse_kl", 0.3, 2.0), ("jsd", 0.5, 1.5)])
def test_model_loss_matches_a_numpy_transcription(kind, alpha, T):
  obj, graphdef, params, rest, tparams, student, teacher = setup(alpha=alpha, kind=kind, T=T)
  b = packed_batch(2)
  batch = {k: jnp.asarray(v) for k, v in b.items()}
  got = float(loss_fn(obj, graphdef, rest, tparams, batch)(params))
  s = np.asarray(student(batch["input_ids"], batch["positions"], batch["segment_ids"]), np.float64)[:, :-1]
  t = np.asarray(teacher(batch["input_ids"], batch["positions"], batch["segment_ids"]), np.float64)[:, :-1]
  seg = b["segment_ids"]
  w = (b["loss_mask"][:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  y = b["input_ids"][:, 1:]
  log_q = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(-1, keepdims=True)
  nll = -np.take_along_axis(log_q, y[..., None], -1)[..., 0]
  want = ((alpha * nll + (1 - alpha) * np_divergence(s, t, kind, T)) * w).sum() / w.sum()
  np.testing.assert_allclose(got, want, rtol=2e-5)


def test_chunked_and_packed_forms_are_equal():
  obj, graphdef, params, rest, tparams, *_ = setup(kind="jsd", alpha=0.2, T=1.5)
  rng = np.random.default_rng(3)
  examples = []
  for _ in range(6):
    n = int(rng.integers(5, 12))
    ids = rng.integers(1, CFG.vocab_size, n).astype(np.int32)
    mask = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(np.int32)
    examples.append((ids, mask))
  sums = {}
  for name, rows in (("packed", packing.pack_rows(examples, 32)), ("unpacked", packing.pack_rows(examples, 32,
                                                                                                    packing=False))):
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    for chunk in (4, 31):
      o = dataclasses.replace(obj, chunk=chunk)
      s, m = o.loss(Policy(graphdef, params, rest), batch, tparams, o.totals(batch))
      sums[(name, chunk)] = (float(s), float(m["kl"][0]))
  ref = sums[("unpacked", 31)]
  for k, v in sums.items():
    np.testing.assert_allclose(v, ref, rtol=1e-5, err_msg=str(k))


def test_vocabulary_mismatch_names_the_first_difference(tmp_path):
  from tests.helpers.tokenizers import make_tokenizer
  _, a = make_tokenizer(str(tmp_path / "a"), template="llama3")
  _, b = make_tokenizer(str(tmp_path / "b"), template="chatml")
  check_vocab(a, a, 384, 320, "teacher-dir")  # the same tokenizer; a student padded larger
  with pytest.raises(CheckpointError, match=r"teacher-dir.*token .* teacher's id"):
    check_vocab(a, b, 384, 384, "teacher-dir")
  with pytest.raises(CheckpointError, match="384 rows, more than the student's 320"):
    check_vocab(a, a, 320, 384, "teacher-dir")


def test_cli_distillation_run_with_lora_student(tiny_run, tmp_path):
  """A 2-layer student (LoRA) distilled from the shared run's export as teacher; eval_kl beside eval_loss."""
  teacher = tmp_path / "teacher"
  cli.jaxtune("export", "--run", tiny_run.run, "--out", str(teacher))
  run = tmp_path / "run"
  p = cli.jaxtune("train", tiny_run.config, f"--config.run.dir={run}", "--config.train.objective=distill",
                  f"--config.distill.teacher={teacher}", "--config.distill.temperature=2.0",
                  "--config.distill.alpha=0.1", "--config.lora.rank=4", "--config.train.steps=4",
                  "--config.train.log_every=1", "--config.train.eval_every=2", f"--config.data.eval=('{tiny_run.data}',)",
                  "--config.checkpoint.every=2", "--config.optim.lr=1e-2")
  assert "distillation teacher" in p.stdout
  rows = cli.metrics(str(run))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert all("kl" in r and "ce" in r for r in rows) and rows[-1]["kl"] < rows[0]["kl"]
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [2, 4] and all(r["eval_kl"] >= 0 for r in evals)
  np.testing.assert_allclose(rows[0]["loss"], 0.1 * rows[0]["ce"] + 0.9 * rows[0]["kl"], rtol=1e-5)
