"""bench/synth_throughput.py runs end to end on a tiny HF checkpoint (jaxtune synth and the torch reference)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import synth_throughput as bench  # noqa: E402

from tests.helpers.hf_models import make_tiny_chat_model  # noqa: E402


def test_tiny_model_vs_torch(tmp_path):
  model_dir, tok = make_tiny_chat_model(tmp_path, "llama", initializer_range=0.3)  # varied, non-empty replies
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c}]}) + "\n"
                             for c in ("Hello!", "What is the capital of France? Answer briefly.", "Sort: 3 1 2")))
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # one CPU device, not the 8 of tests/conftest.py
  cmd = [sys.executable, os.path.join(ROOT, "bench", "synth_throughput.py"), "--model", str(model_dir), "--prompts",
         str(prompts), "--n-prompts", "3", "--batch", "1,2", "--max-new-tokens", "5"]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  by_side = {}
  for side, r in (r for r in map(bench.results.parse_result, p.stdout.strip().splitlines()) if r):
    by_side.setdefault(side, []).append(r)
  assert set(by_side) == {"jaxtune", "torch", "ratio"}
  for side in ("jaxtune", "torch"):
    assert [r["batch"] for r in by_side[side]] == [1, 2]
    for r in by_side[side]:
      assert set(r) == {"batch", "tokens_per_s", "prompts_per_s", "wall_s", "new_tokens"}
      assert r["new_tokens"] == 15 and all(v > 0 for v in r.values())  # no stop token in 5 random tokens
  for r, j, t in zip(by_side["ratio"], by_side["jaxtune"], by_side["torch"]):
    assert r["jaxtune_over_torch"] == pytest.approx(j["tokens_per_s"] / t["tokens_per_s"], rel=1e-2)
    assert r["same_tokens_prompts"] == r["prompts"] == 3  # float32 greedy on both sides: the same tokens
