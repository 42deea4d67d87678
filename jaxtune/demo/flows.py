"""The demos end to end: what `jaxtune train --config configs/demo*.py` runs.

  sft      configs/demo.py          a tiny random Llama tuned on synthetic tasks; exact match before/after
  dpo      configs/demo_dpo.py      the SFT demo's model tuned with DPO on right-vs-plausibly-wrong pairs
  distill  configs/demo_distill.py  a smaller student distilled from the SFT demo's model, against the same
                                    student tuned by SFT on the same data and budget

The training loop is handed in (`train`), so that nothing but the CLI imports it. Each demo that starts from
the SFT demo's tuned model builds it first, once, into the demo cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

import jaxtune
from jaxtune.config import Config
from jaxtune.data.chat import load_tokenizer
from jaxtune.demo import assets as assets_lib
from jaxtune.demo import configs
from jaxtune.demo import evaluate as report

log = logging.getLogger(__name__)


def run(cfg: Config, train: Callable) -> int:
  flow = {"sft": run_sft, "dpo": run_dpo, "distill": run_distill}[cfg.train.objective]
  return flow(cfg, train)


def _export(result, run_dir: str) -> tuple[object, str]:
  out = os.path.join(run_dir, "hf")
  model = result.model()
  jaxtune.save_pretrained(model, out, tokenizer=result.tokenizer)
  return model, out


def run_sft(cfg: Config, train: Callable) -> int:
  t0 = time.perf_counter()
  assets_lib.prepare(cfg, log=log.info)
  tokenizer = load_tokenizer(cfg.model.path)
  before = report.report_before(cfg, jaxtune.load_pretrained(cfg.model.path), tokenizer, log=log.info)
  result = train(cfg)
  model, out = _export(result, cfg.run.dir)
  after = report.report_after(cfg, model, result.tokenizer, out, samples=result.samples, log=log.info)
  log.info("demo: held-out exact match %.1f%% before -> %.1f%% after tuning, in %.0fs; tuned model exported to %s",
           100 * before, 100 * after, time.perf_counter() - t0, os.path.abspath(out))
  return 0


def tuned_sft_model(cache_dir: str, train: Callable) -> tuple[assets_lib.DemoAssets, str]:
  """(the SFT demo's assets, the directory of its tuned model), tuning it first if the cache lacks it."""
  paths = configs.dpo_paths(cache_dir)
  sft = Config.from_dict(configs.sft_config(cache_dir))
  assets = assets_lib.prepare(sft, log=log.info)
  if not os.path.exists(os.path.join(paths["sft_model"], "config.json")):
    log.info("[demo] the SFT demo's tuned model is not in the cache yet: tuning it first (configs/demo.py)")
    sft = dataclasses.replace(sft, run=dataclasses.replace(sft.run, dir=paths["sft_run"]),
                              eval=dataclasses.replace(sft.eval, prompts=""),
                              train=dataclasses.replace(sft.train, eval_every=0))
    result = train(sft)
    jaxtune.save_pretrained(result.model(), paths["sft_model"], tokenizer=result.tokenizer)
  return assets, paths["sft_model"]


def run_dpo(cfg: Config, train: Callable) -> int:
  """DPO of the SFT demo's model: held-out reward accuracy and exact match before and after."""
  from jaxtune.demo import preference
  t0 = time.perf_counter()
  paths = configs.dpo_paths(cfg.demo.cache_dir)
  assets, _ = tuned_sft_model(cfg.demo.cache_dir, train)
  preference.prepare(Path(paths["pairs"]), cfg.demo.train_examples, assets.heldout_path)
  tokenizer = load_tokenizer(cfg.model.path)
  start = jaxtune.load_pretrained(cfg.model.path)
  pref_before = report.report_preferences("before DPO", cfg, start, tokenizer, paths["heldout"], None)
  before = report.report_before(cfg, start, tokenizer, log=log.info)
  del start
  result = train(cfg)
  model, out = _export(result, cfg.run.dir)
  pref_after = report.report_preferences("after DPO", cfg, model, result.tokenizer, paths["heldout"],
                                         result.last_metrics.get("eval_reward_accuracy"))
  after = report.report_after(cfg, model, result.tokenizer, out, samples=result.samples, log=log.info)
  log.info("demo_dpo: held-out reward accuracy 50%% -> %.1f%%, log-prob preference %.1f%% -> %.1f%%, greedy exact "
           "match %.1f%% -> %.1f%%, in %.0fs", 100 * result.last_metrics.get("eval_reward_accuracy", float("nan")),
           100 * pref_before, 100 * pref_after, 100 * before, 100 * after, time.perf_counter() - t0)
  return 0


def run_distill(cfg: Config, train: Callable) -> int:
  """A smaller student distilled from the SFT demo's tuned model, against the same student tuned by SFT on the
  same data, steps and batch: held-out exact match of teacher, SFT student and distilled student."""
  t0 = time.perf_counter()
  assets, teacher_dir = tuned_sft_model(cfg.demo.cache_dir, train)
  student = configs.distill_paths(cfg.demo.cache_dir)["student_base"]
  assets_lib.build_student(Path(student))
  tokenizer = load_tokenizer(teacher_dir)
  teacher = report.exact_match(cfg, jaxtune.load_pretrained(teacher_dir), tokenizer)
  log.info("[demo] teacher (the SFT demo's model, %s): held-out exact match %.1f%%", teacher_dir,
           100 * teacher.accuracy)
  sft_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective="sft"),
                                run=dataclasses.replace(cfg.run, dir=cfg.run.dir + "_sft"))
  scores = {}
  for name, c in (("SFT", sft_cfg), ("distilled", cfg)):
    log.info("[demo] student tuned by %s (%s)", name, c.run.dir)
    result = train(c)
    scores[name] = report.from_samples(result.samples).accuracy if result.samples else float("nan")
    log.info("[demo] student tuned by %s: held-out exact match %.1f%%", name, 100 * scores[name])
  log.info("demo_distill: held-out exact match: teacher %.1f%%, student by SFT %.1f%%, student distilled %.1f%% "
           "(same data, %d steps of %d rows each), in %.0fs", 100 * teacher.accuracy, 100 * scores["SFT"],
           100 * scores["distilled"], cfg.train.steps, cfg.train.batch_size, time.perf_counter() - t0)
  return 0
