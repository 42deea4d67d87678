"""`jaxtune eval` as two `jax.distributed` processes (4 CPU devices each, the batch sharded over all 8) gives
what one process with 8 devices gives: every request's answer, every score; process 0 writes results.json."""

import json
import os

import numpy as np

from tests.helpers import cli
from tests.helpers import harness_tasks as ht
from tests.helpers.hf_models import make_tiny_chat_model
from tests.train.test_multiprocess import run_one_and_two


def test_two_processes_equal_one(tmp_path):
  model_dir, _ = make_tiny_chat_model(tmp_path, "llama")
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  ht.write_mc_task(tasks, n=6)
  ht.write_gen_task(tasks, max_gen_toks=6)
  ht.write_rolling_task(tasks, n=2)

  def argv(run):
    return cli.cli_cmd("eval", "--model", str(model_dir), "--tasks", "tiny_mc,tiny_gen,tiny_ppl", "--include-path",
                       str(tasks), "--batch-size", "4", "--log-samples", "--out", f"{run}.json")

  one, two, outs = run_one_and_two(argv, tmp_path)
  a, b = (json.load(open(f"{r}.json")) for r in (one, two))
  for task in ("tiny_mc", "tiny_gen", "tiny_ppl"):
    for k, v in a["results"][task].items():
      if isinstance(v, float):
        np.testing.assert_allclose(b["results"][task][k], v, rtol=1e-5, err_msg=f"{task} {k}")
    ra = [s["resps"] for s in a["samples"][task]]
    rb = [s["resps"] for s in b["samples"][task]]
    if task == "tiny_gen":
      assert ra == rb
    else:
      flat = lambda rs: np.array([x[0][0] if isinstance(x[0], list) else x[0] for r in rs for x in r], float)  # noqa: E731
      np.testing.assert_allclose(flat(rb), flat(ra), rtol=1e-5)
  assert [("|Version|" in o, "eval_tiny_mc_acc = " in o) for o in outs] == [(True, True), (False, False)], outs
