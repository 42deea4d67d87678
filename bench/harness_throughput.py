"""lm-evaluation-harness throughput: jaxtune's model behind lm-eval's LM interface against lm-eval's own Hugging
Face backend, on the same checkpoint and the same local tasks (multiple choice: loglikelihood requests;
generation: generate_until), each side in its own process.

  python bench/harness_throughput.py --model HF_DIR [--docs 200] [--gen-docs 32] [--batch 16] [--max-gen-toks 32]

Prints `RESULT <side> requests=... wall_s=... requests_per_s=... acc=... exact_match=...` for jaxtune and hf
(wall time of the evaluation alone, the model already loaded and compiled on a warm-up pass), then
`RESULT ratio jaxtune_over_hf=... same_scores=0|1`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, REPO)
from results import parse_result  # noqa: E402

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "music", "table", "paper", "glass"]


def write_tasks(d: str, docs: int, gen_docs: int, max_gen_toks: int) -> None:
  def jsonl(name, rows):
    path = os.path.join(d, name)
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    return path

  mc = [{"question": f"Join {WORDS[i % 10]} and {WORDS[(7 * i + 3) % 10]}, then {WORDS[(i // 10) % 10]}.",
         "choices": [" ".join(WORDS[(i + k) % 10] for k in range(2 + j)) for j in range(4)], "answer": i % 4}
        for i in range(docs)]
  gen = [{"question": f"Spell {WORDS[i % 10]} backwards.", "answer": WORDS[i % 10][::-1]} for i in range(gen_docs)]
  with open(os.path.join(d, "bench_mc.yaml"), "w") as f:
    f.write(f"task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {jsonl('mc.jsonl', mc)}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
  with open(os.path.join(d, "bench_gen.yaml"), "w") as f:
    f.write(f"task: bench_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {jsonl('gen.jsonl', gen)}\n"
            "test_split: test\noutput_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
            f"doc_to_target: \"{{{{answer}}}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: {max_gen_toks}\n"
            "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")


def child(side: str, model: str, tasks: str, batch: int) -> None:
  os.environ["HF_DATASETS_OFFLINE"] = "1"
  import lm_eval
  from lm_eval.tasks import TaskManager
  tm = TaskManager(include_path=tasks, include_defaults=False)
  if side == "jaxtune":
    from jaxtune import mesh as mesh_lib
    from jaxtune.generate import load_model
    from jaxtune.harness.lm import JaxtuneLM
    m, tok, stop = load_model(model, mesh=mesh_lib.make_mesh(), dtype="float32")
    lm = JaxtuneLM(m, tok, stop, hf_config=m.hf_config, batch_size=batch)
  else:
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=model, dtype="float32", device="cpu", batch_size=batch)
  names = ["bench_mc", "bench_gen"]
  lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=batch, bootstrap_iters=0)  # warm-up
  t0 = time.perf_counter()
  r = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, bootstrap_iters=0, log_samples=True)
  wall = time.perf_counter() - t0
  n = sum(len(s["resps"]) for t in names for s in r["samples"][t])
  print(f"RESULT {side} requests={n} wall_s={wall:.3f} requests_per_s={n / wall:.3f} "
        f"acc={r['results']['bench_mc']['acc,none']:.6f} "
        f"exact_match={float(r['results']['bench_gen']['exact_match,none']):.6f}", flush=True)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", required=True)
  p.add_argument("--docs", type=int, default=200)
  p.add_argument("--gen-docs", type=int, default=32)
  p.add_argument("--max-gen-toks", type=int, default=32)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--_child", default=None)
  p.add_argument("--_tasks", default=None)
  a = p.parse_args()
  if a._child:
    return child(a._child, a.model, a._tasks, a.batch)
  tasks = tempfile.mkdtemp(prefix="jaxtune-bench-harness-")
  write_tasks(tasks, a.docs, a.gen_docs, a.max_gen_toks)
  got = {}
  for side in ("jaxtune", "hf"):
    cmd = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--batch", str(a.batch), "--_child", side,
           "--_tasks", tasks]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
      r = parse_result(line)
      if r and r[0] == side:
        got[side] = r[1]
        print(line, flush=True)
    if side not in got:
      raise SystemExit(f"{side} side failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  j, h = got["jaxtune"], got["hf"]
  same = int(j["acc"] == h["acc"] and j["exact_match"] == h["exact_match"])
  print(f"RESULT ratio jaxtune_over_hf={j['requests_per_s'] / h['requests_per_s']:.3f} same_scores={same}")


if __name__ == "__main__":
  main()
