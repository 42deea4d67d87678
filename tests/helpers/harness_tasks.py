"""lm-evaluation-harness tasks written locally (no network): YAMLs and JSONL data in one directory, found
through `include_path` (lm-eval reads `dataset_path: json` files with HF_DATASETS_OFFLINE=1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "music", "table"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _data_files(d: Path, name: str, splits: dict[str, list[dict]]) -> str:
  lines = []
  for split, rows in splits.items():
    f = d / f"{name}_{split}.jsonl"
    _write_jsonl(f, rows)
    lines.append(f"    {split}: {f}")
  return "dataset_path: json\ndataset_kwargs:\n  data_files:\n" + "\n".join(lines) + "\n"


def write_mc_task(d: Path, name: str = "tiny_mc", n: int = 8) -> None:
  """A multiple-choice task (acc, acc_norm) with two few-shot examples from its train split."""
  def doc(i):
    a, b = WORDS[i % 8], WORDS[(3 * i + 1) % 8]
    return {"question": f"Join {a} and {b}.", "choices": [f"{a} {b}", f"{b} {a}", f"{a}-{b}", a], "answer": i % 4}
  (d / f"{name}.yaml").write_text(
      f"task: {name}\n" + _data_files(d, name, {"train": [doc(i + 100) for i in range(4)],
                                                 "test": [doc(i) for i in range(n)]})
      + "training_split: train\ntest_split: test\nfewshot_split: train\nnum_fewshot: 2\n"
      "output_type: multiple_choice\n"
      "doc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_choice: \"{{choices}}\"\n"
      "doc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")


def gen_docs(n: int = 8) -> list[dict]:
  return [{"question": f"Join {WORDS[i % 8]} and {WORDS[(5 * i + 2 + i // 8) % 8]}.", "answer": "x"} for i in range(n)]


def write_gen_task(d: Path, name: str = "tiny_gen", docs: list[dict] | None = None, max_gen_toks: int = 12,
                   until: tuple[str, ...] = ("\n\n", "Q:")) -> None:
  """A generation task (exact_match on the reply before the first stop string)."""
  until_yaml = "[" + ", ".join(json.dumps(u) for u in until) + "]"
  (d / f"{name}.yaml").write_text(
      f"task: {name}\n" + _data_files(d, name, {"test": docs or gen_docs()})
      + "test_split: test\noutput_type: generate_until\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
      "doc_to_target: \"{{answer}}\"\n"
      f"generation_kwargs:\n  until: {until_yaml}\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n"
      "metric_list:\n  - metric: exact_match\n")


def write_rolling_task(d: Path, name: str = "tiny_ppl", n: int = 3, words: int = 90) -> None:
  """A perplexity task (loglikelihood_rolling) whose documents are longer than a tiny model's context.

  The words are drawn at random: a periodic text repeats whole windows, and lm-eval 0.4.13's HF backend then
  scores a window whose input equals an earlier one's (its one-token-continuation logits cache) at the wrong
  positions."""
  import random
  rng = random.Random(0)
  docs = [{"text": " ".join(rng.choice(WORDS) for _ in range(words + 40 * i)) + "."} for i in range(n)]
  (d / f"{name}.yaml").write_text(
      f"task: {name}\n" + _data_files(d, name, {"test": docs})
      + "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
      "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
