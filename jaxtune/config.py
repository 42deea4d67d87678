"""Configuration: ml-collections at the edge, frozen dataclasses inside.

`default_config()` is the one place every key and its default is declared;
recipes in `configs/` start from it and change what they need. `Config.from_dict`
converts a (possibly overridden) ConfigDict once, validating as it goes; the rest
of the code only ever sees the frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections

MASK_MODES = ("assistant", "last_assistant", "none")
REASONING_MODES = ("train", "drop")  # jaxtune.data.messages
SYSTEM_MODES = ("keep", "merge_into_first_user")
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "pretokenized", "auto")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_no_batch")
ATTENTION = ("auto", "xla", "cudnn", "splash")  # jaxtune.models.attention_kernels.IMPLS
SCHEDULES = ("cosine", "linear", "constant")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # HF model dir or hub id
  c.model.dtype = "auto"  # compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU
  c.model.param_dtype = "float32"  # master weights
  c.model.remat = "none"
  # attention implementation of the full forward: "auto" picks per platform (GPU: cuDNN where it can run the
  # layer, else XLA; TPU: the Pallas splash kernel; CPU: XLA); "xla", "cudnn", "splash" force one
  c.model.attention = "auto"

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 0
  c.lora.alpha = 16.0
  c.lora.targets = ("q", "k", "v", "o", "gate", "up", "down")

  c.data = ml_collections.ConfigDict()
  # Sources: tuples of {path, format, weight} (and, for Hugging Face datasets, split / subset), a tuple so
  # --config.data.train="(...)" overrides it. A path is a file, directory or glob (.jsonl, .jsonl.gz, .json,
  # .parquet, .array_record), local or remote (gs://...), a datasets save_to_disk dir, or a hub id hf:OWNER/NAME.
  c.data.train = ()
  c.data.eval = ()
  c.data.eval_fraction = 0.0  # >0 with no data.eval: hold out this fraction of the train examples for eval
  c.data.eval_seed = 0  # which examples eval_fraction holds out (independent of train.seed)
  c.data.seq_len = 2048
  c.data.packing = True
  c.data.mask = "assistant"
  c.data.strict = False
  c.data.overlong = "drop"  # or "truncate"
  c.data.chat_template = ""  # named built-in or .jinja path, for models without one
  # reasoning in assistant replies (inline <think>...</think> or reasoning_content): "train" it with the
  # answer as the template renders it, or "drop" it (render and train the answers only)
  c.data.reasoning = "train"
  # system messages: "keep", or "merge_into_first_user" for templates that refuse a system role (Gemma 2) or
  # drop it (Mistral v0.3 when the conversation ends with a reply)
  c.data.system = "keep"
  c.data.workers = 0
  c.data.cache_dir = ""  # "": off; else tokenized examples are cached there across runs

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8
  c.train.grad_accum = 1
  c.train.steps = 100
  c.train.seed = 0
  c.train.eval_every = 0
  c.train.log_every = 10
  c.train.loss_chunk = 0  # >0: cross-entropy over this many positions at a time (no full [B,T,V] logits)
  c.train.skip_nonfinite = False  # skip an update with a non-finite loss/grad instead of stopping

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-5
  c.optim.warmup_steps = 0
  c.optim.schedule = "cosine"
  c.optim.min_lr_ratio = 0.1
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # Prompts sampled at every eval point (train.eval_every, and the last step): a JSONL (or any data
  # source form) of conversations with an optional "reference" answer; a trailing assistant turn is the
  # reference when none is given. Samples go to RUN_DIR/samples.jsonl and TensorBoard, exact match
  # (when references exist) to metrics.jsonl as eval_exact_match.
  c.eval = ml_collections.ConfigDict()
  c.eval.prompts = ""
  c.eval.max_new_tokens = 0  # 0: the longest reference + 8 tokens (256 when a prompt has no reference)
  c.eval.temperature = 0.0  # 0: greedy
  c.eval.batch_size = 64  # prompts decoded together
  c.eval.log_samples = 8  # samples shown in TensorBoard per eval (samples.jsonl has them all)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 0  # 0: only the final save
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  c.checkpoint.allow_config_change = False  # resume even if data/seed/seq_len changed

  c.run = ml_collections.ConfigDict()
  c.run.dir = "runs/default"

  # The self-contained demo (configs/demo.py): builds its own tiny model,
  # tokenizer and synthetic task data, and reports exact match before/after.
  c.demo = ml_collections.ConfigDict()
  c.demo.enabled = False
  c.demo.cache_dir = ""  # default: ~/.cache/jaxtune/demo
  c.demo.train_examples = 20000
  c.demo.heldout_examples = 200
  c.demo.show = 6
  return c


class ConfigError(ValueError):
  """A config value that cannot work, with the key that holds it."""


def _check(ok: bool, key: str, msg: str) -> None:
  if not ok:
    raise ConfigError(f"config key {key!r}: {msg}")


@dataclasses.dataclass(frozen=True)
class ModelCfg:
  path: str
  dtype: str = "auto"
  param_dtype: str = "float32"
  remat: str = "none"
  attention: str = "auto"

  def __post_init__(self):
    _check(self.dtype in DTYPES + ("auto",), "model.dtype", f"{self.dtype!r} not in {DTYPES + ('auto',)}")
    _check(self.param_dtype in DTYPES, "model.param_dtype", f"{self.param_dtype!r} not in {DTYPES}")
    _check(self.remat in REMAT, "model.remat", f"{self.remat!r} not in {REMAT}")
    _check(self.attention in ATTENTION, "model.attention", f"{self.attention!r} not in {ATTENTION}")


@dataclasses.dataclass(frozen=True)
class LoraCfg:
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class SourceCfg:
  path: str
  format: str = "auto"
  weight: float = 1.0
  split: str = ""  # Hugging Face datasets: the split of a DatasetDict / hub dataset ("" = "train")
  subset: str = ""  # Hugging Face hub datasets: the configuration name

  def __post_init__(self):
    _check(self.format in FORMATS, "data.train[].format", f"{self.format!r} not in {FORMATS}")
    _check(self.weight > 0, "data.train[].weight", f"must be > 0, got {self.weight}")


@dataclasses.dataclass(frozen=True)
class DataCfg:
  train: tuple[SourceCfg, ...]
  eval: tuple[SourceCfg, ...] = ()
  seq_len: int = 2048
  packing: bool = True
  mask: str = "assistant"
  strict: bool = False
  overlong: str = "drop"
  chat_template: str = ""
  workers: int = 0
  cache_dir: str = ""
  eval_fraction: float = 0.0
  eval_seed: int = 0
  reasoning: str = "train"
  system: str = "keep"

  def __post_init__(self):
    _check(self.seq_len >= 2, "data.seq_len", f"must be >= 2, got {self.seq_len}")
    _check(0.0 <= self.eval_fraction < 1.0, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
    _check(not (self.eval_fraction > 0 and self.eval), "data.eval_fraction",
           "is set and data.eval has sources too; use one or the other")
    _check(self.mask in MASK_MODES, "data.mask", f"{self.mask!r} not in {MASK_MODES}")
    _check(self.overlong in ("drop", "truncate"), "data.overlong", f"{self.overlong!r} not in ('drop', 'truncate')")
    _check(self.reasoning in REASONING_MODES, "data.reasoning", f"{self.reasoning!r} not in {REASONING_MODES}")
    _check(self.system in SYSTEM_MODES, "data.system", f"{self.system!r} not in {SYSTEM_MODES}")


@dataclasses.dataclass(frozen=True)
class TrainCfg:
  batch_size: int = 8
  grad_accum: int = 1
  steps: int = 100
  seed: int = 0
  eval_every: int = 0
  log_every: int = 10
  skip_nonfinite: bool = False
  loss_chunk: int = 0

  def __post_init__(self):
    _check(self.steps >= 1, "train.steps", "must be >= 1")
    _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    _check(self.batch_size % self.grad_accum == 0, "train.batch_size",
           f"{self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
    _check(self.log_every >= 1, "train.log_every", "must be >= 1")
    _check(self.eval_every >= 0, "train.eval_every", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class OptimCfg:
  lr: float = 1e-5
  warmup_steps: int = 0
  schedule: str = "cosine"
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8

  def __post_init__(self):
    _check(self.schedule in SCHEDULES, "optim.schedule", f"{self.schedule!r} not in {SCHEDULES}")
    _check(self.lr > 0, "optim.lr", "must be > 0")


@dataclasses.dataclass(frozen=True)
class MeshCfg:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = (self.data, self.fsdp, self.tensor)
    _check(sum(s == -1 for s in sizes) <= 1, "mesh", "at most one of mesh.data/fsdp/tensor may be -1")
    _check(all(s == -1 or s >= 1 for s in sizes), "mesh", f"sizes must be >= 1 or -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class EvalCfg:
  prompts: str = ""
  max_new_tokens: int = 0
  temperature: float = 0.0
  batch_size: int = 64
  log_samples: int = 8

  def __post_init__(self):
    _check(self.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0")
    _check(self.temperature >= 0, "eval.temperature", "must be >= 0")
    _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
    _check(self.log_samples >= 0, "eval.log_samples", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class CheckpointCfg:
  every: int = 0
  keep: int = 3
  async_save: bool = True
  allow_config_change: bool = False


@dataclasses.dataclass(frozen=True)
class RunCfg:
  dir: str = "runs/default"


@dataclasses.dataclass(frozen=True)
class DemoCfg:
  enabled: bool = False
  cache_dir: str = ""
  train_examples: int = 20000
  heldout_examples: int = 200
  show: int = 6


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelCfg
  lora: LoraCfg
  data: DataCfg
  train: TrainCfg
  optim: OptimCfg
  mesh: MeshCfg
  eval: EvalCfg
  checkpoint: CheckpointCfg
  run: RunCfg
  demo: DemoCfg

  @classmethod
  def from_dict(cls, cd: ml_collections.ConfigDict | Mapping[str, Any]) -> "Config":
    d = cd.to_dict() if isinstance(cd, ml_collections.ConfigDict) else dict(cd)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in d:
      _check(key in known, key, f"unknown section; known: {sorted(known)}")
    parts = {}
    for f in dataclasses.fields(cls):
      sub_cls = {"model": ModelCfg, "lora": LoraCfg, "data": DataCfg, "train": TrainCfg,
                 "optim": OptimCfg, "mesh": MeshCfg, "eval": EvalCfg, "checkpoint": CheckpointCfg,
                 "run": RunCfg, "demo": DemoCfg}[f.name]
      parts[f.name] = _build(sub_cls, f.name, dict(d.get(f.name, {})))
    cfg = cls(**parts)
    _check(cfg.train.eval_every == 0 or cfg.has_eval_data or bool(cfg.eval.prompts), "train.eval_every",
           "is set but there is nothing to evaluate: data.eval has no sources, data.eval_fraction is 0 and "
           "eval.prompts is empty")
    return cfg

  @property
  def has_eval_data(self) -> bool:
    """Whether held-out examples exist for eval_loss."""
    return bool(self.data.eval) or self.data.eval_fraction > 0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _build(sub_cls, section: str, values: dict[str, Any]):
  names = {f.name for f in dataclasses.fields(sub_cls)}
  for key in values:
    _check(key in names, f"{section}.{key}", f"unknown key; known keys of {section}: {sorted(names)}")
  if sub_cls is DataCfg:
    for k in ("train", "eval"):
      if k in values:
        values[k] = tuple(_source(f"data.{k}[{i}]", s) for i, s in enumerate(values[k] or ()))
  if sub_cls is LoraCfg and "targets" in values:
    values["targets"] = tuple(values["targets"])
  return sub_cls(**values)


def _source(key: str, s: Any) -> SourceCfg:
  if isinstance(s, str):
    return SourceCfg(path=s)
  s = dict(s)
  names = {f.name for f in dataclasses.fields(SourceCfg)}
  for k in s:
    _check(k in names, f"{key}.{k}", f"unknown key; known: {sorted(names)}")
  _check("path" in s, key, "a source needs a 'path'")
  return SourceCfg(**s)
