"""The two demos' configs, built here so that the DPO demo can build the SFT demo it starts from.

configs/demo.py and configs/demo_dpo.py call these (config files are loaded by path from any working
directory, so they cannot import each other).
"""

from __future__ import annotations

from jaxtune.config import default_config
from jaxtune.demo.assets import asset_paths


def sft_config(cache_dir: str = ""):
  """`jaxtune train --config configs/demo.py`: a tiny random Llama tuned on the synthetic tasks."""
  c = default_config()
  c.demo.enabled = True
  c.demo.cache_dir = cache_dir
  c.demo.train_examples = 20000
  c.demo.heldout_examples = 200
  c.demo.show = 6
  assets = asset_paths(c.demo.cache_dir)
  c.model.path = str(assets.model_dir)
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.data.train = ({"path": str(assets.train_path), "format": "messages", "weight": 1.0},)
  c.data.eval = ({"path": str(assets.heldout_path), "format": "messages", "weight": 1.0},)
  c.eval.prompts = str(assets.heldout_path)  # sampled at every eval point; the last one is "after tuning"
  c.eval.max_new_tokens = 0  # the longest answer + a few tokens
  c.data.seq_len = 256
  c.data.packing = True
  c.data.mask = "assistant"
  c.train.batch_size = 16
  c.train.steps = 450
  c.train.seed = 0
  c.train.log_every = 50
  c.train.eval_every = 150
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 30
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.mesh.data = 1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.checkpoint.every = 0
  c.checkpoint.keep = 1
  c.run.dir = "runs/demo"
  return c


def dpo_paths(cache_dir: str = "") -> dict[str, str]:
  """Where the DPO demo keeps its SFT starting point and its pairs (beside the SFT demo's assets)."""
  root = asset_paths(cache_dir).root
  return {"sft_run": str(root / "sft_run"), "sft_model": str(root / "sft_run" / "hf"), "pairs": str(root / "dpo"),
          "train": str(root / "dpo" / "pairs_train.jsonl"), "heldout": str(root / "dpo" / "pairs_heldout.jsonl")}


def dpo_config(cache_dir: str = ""):
  """`jaxtune train --config configs/demo_dpo.py`: DPO of the SFT demo's tuned model (built first if missing)
  on pairs of a correct answer and a plausible wrong one."""
  c = sft_config(cache_dir)
  paths = dpo_paths(cache_dir)
  c.train.objective = "dpo"
  c.demo.kind = "dpo"
  c.dpo.loss = "sigmoid"
  c.dpo.beta = 0.1
  c.dpo.reference = "cached"
  # The chosen replies' NLL beside the DPO loss (RPO): without it this tiny model unlearns ending its turns
  # (held-out exact match 99.0% -> 77.5% after 200 steps, measured), with it 99.0% -> 99.0%.
  c.dpo.sft_weight = 1.0
  c.model.path = paths["sft_model"]
  c.data.train = ({"path": paths["train"], "format": "preference", "weight": 1.0},)
  c.data.eval = ({"path": paths["heldout"], "format": "preference", "weight": 1.0},)
  c.demo.train_examples = 4000  # preference pairs (the SFT demo's own assets keep their 20000 examples)
  c.train.batch_size = 16
  c.train.steps = 150
  c.train.log_every = 25
  c.train.eval_every = 50
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 10
  c.run.dir = "runs/demo_dpo"
  return c


def distill_paths(cache_dir: str = "") -> dict[str, str]:
  return {"student_base": str(asset_paths(cache_dir).root / "student_base")}


def distill_config(cache_dir: str = ""):
  """`jaxtune train --config configs/demo_distill.py`: a student a quarter of the SFT demo model's size,
  distilled from that tuned model (built first if missing) on the SFT demo's data; the flow also tunes the
  same student by SFT on the same data and budget, and compares their held-out exact match."""
  c = sft_config(cache_dir)
  c.train.objective = "distill"
  c.demo.kind = "distill"
  c.model.path = distill_paths(cache_dir)["student_base"]
  c.distill.teacher = dpo_paths(cache_dir)["sft_model"]
  c.distill.temperature = 1.0
  c.distill.alpha = 0.5  # half the teacher's distribution, half the data's labels
  c.distill.divergence = "forward_kl"
  c.train.steps = 600
  c.train.eval_every = 600  # exact match at the end (eval.prompts: the SFT demo's held-out prompts)
  c.train.log_every = 50
  c.optim.lr = 3e-3
  c.run.dir = "runs/demo_distill"
  return c


def rft_settings() -> dict:
  """The rejection-sampling demo's fixed settings: the short SFT it starts from and the sampling."""
  return {"base_steps": 150, "prompts": 2000, "samples": 4, "temperature": 1.0}


def rft_paths(cache_dir: str = "") -> dict[str, str]:
  root = asset_paths(cache_dir).root
  return {"base_run": str(root / "sft150_run"), "base_model": str(root / "sft150_run" / "hf"), "dir": str(root / "rft"),
          "prompts": str(root / "rft" / "prompts.jsonl"), "kept": str(root / "rft" / "kept.jsonl")}


def rft_config(cache_dir: str = ""):
  """`jaxtune train --config configs/demo_rft.py`: the SFT demo tuned for 150 of its 450 steps samples 4
  answers to each of 2,000 training prompts (temperature 1), keeps one exactly right answer per prompt, and is
  tuned on those for 150 steps."""
  c = sft_config(cache_dir)
  paths = rft_paths(cache_dir)
  c.demo.kind = "rft"
  c.model.path = paths["base_model"]
  c.data.train = ({"path": paths["kept"], "format": "messages", "weight": 1.0},)
  c.train.steps = 150
  c.train.eval_every = 150
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 10
  c.run.dir = "runs/demo_rft"
  return c
