"""Configuration: every key declared once, here; ml-collections at the edge, frozen dataclasses inside.

Each key is one `key(default, help, ...)` field of a section dataclass below: its
default, its one line of help, its allowed values or range, and whether a
resumed run may change it. From those declarations come

  - `default_config()`: the ConfigDict that config files in `configs/` start from and
    `--config.KEY=VALUE` overrides (ml-collections: typed, locked, typos named);
  - `Config.from_dict()`: the frozen dataclasses the rest of the code reads, validated
    once (choices, ranges, cross-key rules); an unknown key names the nearest one;
  - `help_text()`: what `jaxtune train --help` prints (every key, default, help);
  - `markdown_table()`: the README's key table (a test checks the README holds it).

This module imports neither jax nor flax (the CLI answers `--help` and config errors
before loading them); `compute_dtype` imports jax when called.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Mapping

from jaxtune.errors import ConfigError

MASK_MODES = ("assistant", "last_assistant", "none")
REASONING_MODES = ("train", "drop")  # jaxtune.data.messages
SYSTEM_MODES = ("keep", "merge_into_first_user")
FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference", "pretokenized", "auto")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_no_batch")
QUANTIZE = ("none", "int8", "nf4")  # jaxtune.models.quant.FORMATS
ATTENTION = ("auto", "xla", "blockwise", "cudnn", "splash")  # jaxtune.models.attention_kernels.IMPLS
SCHEDULES = ("cosine", "linear", "constant")
OBJECTIVES = ("sft", "dpo", "distill")  # jaxtune.train.objectives
DPO_LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # jaxtune.models.lora.TARGETS


def key(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,  # noqa: A002
        max: float | None = None, min_exclusive: bool = False, determinism: bool = False) -> Any:
  """Declares one config key: its default, one line of help, allowed values (`choices`) or range
  (`min`/`max`, `min_exclusive` for > min), and `determinism` when changing it on resume would change
  which tokens the run sees (a resumed run refuses the change unless checkpoint.allow_config_change)."""
  meta = dict(help=help, choices=choices, min=min, max=max, min_exclusive=min_exclusive, determinism=determinism)
  return dataclasses.field(default=default, metadata=meta)


class _Section:
  """Generic validation from the declarations: choices and ranges, each error naming its key."""
  _NAME = ""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      m, v, name = f.metadata, getattr(self, f.name), f"{self._NAME}.{f.name}"
      if not m:
        continue
      if m["choices"] is not None and v not in m["choices"]:
        raise ConfigError(f"config key {name!r}: {v!r} is not one of {m['choices']}")
      if m["min"] is not None:
        ok = v > m["min"] if m["min_exclusive"] else v >= m["min"]
        if not ok:
          raise ConfigError(f"config key {name!r}: must be {'>' if m['min_exclusive'] else '>='} {m['min']}, got {v!r}")
      if m["max"] is not None and v > m["max"]:
        raise ConfigError(f"config key {name!r}: must be <= {m['max']}, got {v!r}")


def _check(ok: bool, name: str, msg: str) -> None:
  if not ok:
    raise ConfigError(f"config key {name!r}: {msg}")


@dataclasses.dataclass(frozen=True)
class ModelCfg(_Section):
  _NAME = "model"
  path: str = key("", "HF model directory or hub id (hub ids resolve through huggingface_hub; safetensors only)",
                  determinism=True)
  dtype: str = key("auto", "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU", choices=DTYPES + ("auto",))
  param_dtype: str = key("float32", "dtype of the stored (master) parameters", choices=DTYPES)
  remat: str = key("none", "rematerialisation policy of each decoder block", choices=REMAT)
  attention: str = key("auto", "attention implementation: auto picks per platform and row (TPU splash; packed rows "
                       "blockwise on CPU/GPU; unpacked rows GPU cuDNN where it can run the layer, else XLA); xla, "
                       "blockwise, cudnn, splash force one", choices=ATTENTION)
  scan_layers: bool = key(True, "stack the decoder blocks and run them with lax.scan (compile time independent of "
                          "depth; remat per block); False: unrolled. Checkpoints keep the layout they were "
                          "written with")
  quantize: str = key("none", "QLoRA: store the frozen base's decoder projections quantized (int8, or nf4 4-bit "
                      "NormalFloat) with blockwise scales, dequantized inside each matmul; needs lora.rank > 0",
                      choices=QUANTIZE)


@dataclasses.dataclass(frozen=True)
class LoraCfg(_Section):
  _NAME = "lora"
  rank: int = key(0, "0: full fine-tuning; > 0: train LoRA adapters of this rank only (the base is frozen)", min=0,
                  determinism=True)
  alpha: float = key(16.0, "LoRA scale numerator: adapters add (alpha / rank) * x @ A @ B", min=0, min_exclusive=True)
  targets: tuple[str, ...] = key(LORA_TARGETS, "projections that get adapters: q, k, v, o, gate, up, down",
                                 determinism=True)

  def __post_init__(self):
    super().__post_init__()
    bad = [t for t in self.targets if t not in LORA_TARGETS]
    _check(not bad and len(self.targets) > 0, "lora.targets",
           f"{list(self.targets)}: each must be one of {LORA_TARGETS}" + (f"; unknown: {bad}" if bad else ""))


@dataclasses.dataclass(frozen=True)
class SourceCfg(_Section):
  """One data source: an entry of data.train / data.eval."""
  _NAME = "data.train[]"
  path: str = key("", "a file, directory or glob (.jsonl, .jsonl.gz, .json, .parquet, .array_record), local or "
                  "gs://, a datasets save_to_disk dir, or a hub dataset id hf:OWNER/NAME")
  format: str = key("auto", "record format", choices=FORMATS)
  weight: float = key(1.0, "sampling weight among the sources", min=0, min_exclusive=True)
  split: str = key("", "Hugging Face datasets: the split of a DatasetDict / hub dataset ('' = train)")
  subset: str = key("", "Hugging Face hub datasets: the configuration name")

  def __post_init__(self):
    super().__post_init__()
    _check(bool(self.path), f"{self._NAME}.path", "a source needs a 'path'")


@dataclasses.dataclass(frozen=True)
class DataCfg(_Section):
  _NAME = "data"
  train: tuple[SourceCfg, ...] = key((), "training sources: a tuple of {path, format, weight} (or paths)",
                                     determinism=True)
  eval: tuple[SourceCfg, ...] = key((), "held-out sources for eval_loss, same form")
  eval_fraction: float = key(0.0, "> 0 with no data.eval: hold out this fraction of the train examples for eval",
                             min=0.0, determinism=True)
  eval_seed: int = key(0, "which examples data.eval_fraction holds out (independent of train.seed)",
                       determinism=True)
  seq_len: int = key(2048, "tokens per row", min=2, determinism=True)
  packing: bool = key(True, "pack several examples per row with segment ids", determinism=True)
  mask: str = key("assistant", "trained tokens: every assistant reply, the last one, or every token (none)",
                  choices=MASK_MODES, determinism=True)
  strict: bool = key(False, "fail on the first malformed record or dropped example instead of counting it")
  overlong: str = key("drop", "examples longer than seq_len: drop them, or truncate (preference pairs lose prompt "
                      "tokens from the left)", choices=("drop", "truncate"), determinism=True)
  chat_template: str = key("", "for models without a template: a built-in (llama3, chatml) or a .jinja path",
                           determinism=True)
  reasoning: str = key("train", "reasoning in replies (inline think tags or reasoning_content): train it with the answer "
                       "as the template renders it, or drop it (train the answers only)", choices=REASONING_MODES,
                       determinism=True)
  system: str = key("keep", "system messages: keep, or merge_into_first_user for templates that refuse or drop a "
                    "system role (Gemma 2, Mistral v0.3)", choices=SYSTEM_MODES, determinism=True)
  workers: int = key(0, "Grain worker processes for packing/batching (0: in the main process)", min=0,
                     determinism=True)
  tokenize_workers: int = key(0, "processes tokenizing records before training: 0 = auto (one per CPU core, at most 16, "
                              "once there are more than a few thousand records), 1 = in the main process; never changes "
                              "the examples", min=0)
  cache_dir: str = key("", "cache tokenized examples (and DPO reference log-probs) here across runs, local or gs://; "
                       "every process of a run reads it; '' = off")

  def __post_init__(self):
    super().__post_init__()
    _check(self.eval_fraction < 1.0, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
    _check(not (self.eval_fraction > 0 and self.eval), "data.eval_fraction",
           "is set and data.eval has sources too; use one or the other")


@dataclasses.dataclass(frozen=True)
class TrainCfg(_Section):
  _NAME = "train"
  objective: str = key("sft", "what the run optimises: sft, dpo (preference pairs) or distill (teacher logits)",
                       choices=OBJECTIVES, determinism=True)
  batch_size: int = key(8, "global batch in rows per optimizer step", min=1, determinism=True)
  grad_accum: int = key(1, "micro-steps per optimizer step (batch_size must divide by it)", min=1)
  steps: int = key(100, "optimizer steps", min=1)
  seed: int = key(0, "data order (and LoRA init) seed", determinism=True)
  eval_every: int = key(0, "eval loss / eval prompts every this many steps (and at the last); 0 = never", min=0)
  log_every: int = key(10, "a metrics.jsonl row every this many steps", min=1)
  loss_chunk: int = key(0, "> 0: the loss over this many positions at a time (no full [rows, seq, vocab] logits)",
                        min=0)
  skip_nonfinite: bool = key(False, "skip an update with a non-finite loss/grad instead of stopping the run")

  def __post_init__(self):
    super().__post_init__()
    _check(self.batch_size % self.grad_accum == 0, "train.batch_size",
           f"{self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class OptimCfg(_Section):
  _NAME = "optim"
  lr: float = key(1e-5, "peak learning rate (AdamW)", min=0, min_exclusive=True)
  warmup_steps: int = key(0, "linear warmup from 0 to optim.lr", min=0)
  schedule: str = key("cosine", "decay after warmup", choices=SCHEDULES)
  min_lr_ratio: float = key(0.1, "the decay ends at lr * min_lr_ratio", min=0.0, max=1.0)
  weight_decay: float = key(0.0, "decoupled weight decay (matrices only)", min=0.0)
  clip_norm: float = key(1.0, "global gradient-norm clip; 0 = off", min=0.0)
  b1: float = key(0.9, "Adam beta1", min=0.0, max=1.0)
  b2: float = key(0.95, "Adam beta2", min=0.0, max=1.0)
  eps: float = key(1e-8, "Adam epsilon", min=0.0, min_exclusive=True)


@dataclasses.dataclass(frozen=True)
class MeshCfg(_Section):
  _NAME = "mesh"
  data: int = key(-1, "data-parallel axis size; -1 takes the remaining devices")
  fsdp: int = key(1, "FSDP axis size (parameters and optimizer state sharded); -1 takes the remaining devices")
  tensor: int = key(1, "tensor-parallel axis size; -1 takes the remaining devices")
  context: int = key(1, "context-parallel axis size: each row's sequence is split across this many devices "
                     "(data.seq_len must divide by it); -1 takes the remaining devices")

  def __post_init__(self):
    super().__post_init__()
    sizes = (self.data, self.fsdp, self.tensor, self.context)
    _check(sum(s == -1 for s in sizes) <= 1, "mesh", "at most one of mesh.data/fsdp/tensor/context may be -1")
    _check(all(s == -1 or s >= 1 for s in sizes), "mesh", f"sizes must be >= 1 or -1, got {sizes}")


@dataclasses.dataclass(frozen=True)
class EvalCfg(_Section):
  _NAME = "eval"
  prompts: str = key("", "conversations (JSONL or any source form, optional 'reference') sampled at every eval "
                     "point; exact match -> eval_exact_match")
  max_new_tokens: int = key(0, "new tokens per eval prompt; 0: the longest reference + 8", min=0)
  temperature: float = key(0.0, "eval-prompt sampling temperature; 0 = greedy", min=0.0)
  batch_size: int = key(64, "eval prompts decoded together", min=1)
  log_samples: int = key(8, "samples shown in TensorBoard per eval (samples.jsonl has them all)", min=0)
  harness_tasks: str = key("", "lm-evaluation-harness tasks (comma-separated) scored at every eval point and the last "
                           "step -> eval_<task>_<metric> in metrics.jsonl; '' = none")
  harness_limit: int = key(0, "documents per harness task at eval points; 0 = all", min=0)
  harness_num_fewshot: int = key(-1, "few-shot examples per harness task; -1 = the task's own", min=-1)
  harness_include_path: str = key("", "a directory of extra lm-eval task YAMLs (local tasks and data)")
  harness_chat_template: bool = key(False, "render harness prompts with the model's chat template")


@dataclasses.dataclass(frozen=True)
class CheckpointCfg(_Section):
  _NAME = "checkpoint"
  every: int = key(0, "save every this many steps; 0 = only the final save", min=0)
  keep: int = key(3, "checkpoints kept (older ones are deleted by Orbax); 0 = all", min=0)
  async_save: bool = key(True, "write checkpoints in the background while training goes on")
  allow_config_change: bool = key(False, "resume even if a key that decides the data order changed")


@dataclasses.dataclass(frozen=True)
class RunCfg(_Section):
  _NAME = "run"
  dir: str = key("runs/default", "run directory (local or gs://): config, metrics, TensorBoard, checkpoints")

  def __post_init__(self):
    super().__post_init__()
    _check(bool(self.dir.strip()), "run.dir", "must name a directory, got an empty string")


@dataclasses.dataclass(frozen=True)
class LogCfg(_Section):
  _NAME = "log"
  wandb_project: str = key("", "Weights & Biases project: the metrics.jsonl scalars, the config and the eval samples "
                           "are logged there too (WANDB_MODE=offline works); '' = off")
  wandb_entity: str = key("", "W&B entity (user or team); '' = the default one")
  wandb_run_name: str = key("", "W&B run name; '' = the run dir's name")
  wandb_tags: str = key("", "W&B tags, comma-separated")


@dataclasses.dataclass(frozen=True)
class DpoCfg(_Section):
  _NAME = "dpo"
  loss: str = key("sigmoid", "preference loss: sigmoid (DPO), ipo, hinge, simpo (reference-free), orpo "
                  "(reference-free)", choices=DPO_LOSSES)
  beta: float = key(0.1, "inverse temperature of the implicit reward (SimPO: its reward scale; ORPO: the "
                    "odds-ratio weight)", min=0, min_exclusive=True)
  label_smoothing: float = key(0.0, "sigmoid: assumed label-noise rate (conservative DPO)", min=0.0, max=0.5)
  simpo_gamma: float = key(0.5, "simpo: target reward margin", min=0.0)
  sft_weight: float = key(0.0, "adds this weight x the chosen replies' NLL (per chosen token) to the loss",
                          min=0.0)
  reference: str = key("cached", "reference log-probs: cached (one pass before training, stored by content) or "
                       "live (frozen reference in the step)", choices=("cached", "live"))


@dataclasses.dataclass(frozen=True)
class DistillCfg(_Section):
  _NAME = "distill"
  teacher: str = key("", "teacher model (HF dir or hub id) for train.objective=distill; same vocabulary")
  temperature: float = key(1.0, "softmax temperature of teacher and student in the divergence", min=0,
                           min_exclusive=True)
  alpha: float = key(0.0, "weight of the hard-label cross-entropy mixed in (1 - alpha on the divergence)",
                     min=0.0, max=1.0)
  divergence: str = key("forward_kl", "forward_kl KL(teacher||student), reverse_kl, or jsd", choices=DIVERGENCES)


@dataclasses.dataclass(frozen=True)
class DemoCfg(_Section):
  _NAME = "demo"
  enabled: bool = key(False, "run the self-contained demo (configs/demo*.py): build assets, report before/after")
  kind: str = key("sft", "which demo: sft (configs/demo.py), dpo, distill, rft (rejection-sampling self-improvement)",
                  choices=("sft", "dpo", "distill", "rft"))
  cache_dir: str = key("", "where the demo's model, tokenizer and tasks are built; '' = ~/.cache/jaxtune/demo")
  train_examples: int = key(20000, "synthetic training examples", min=1)
  heldout_examples: int = key(200, "held-out examples for exact match", min=1)
  show: int = key(6, "sample answers printed", min=0)


@dataclasses.dataclass(frozen=True)
class Config:
  model: ModelCfg = dataclasses.field(default_factory=ModelCfg)
  lora: LoraCfg = dataclasses.field(default_factory=LoraCfg)
  data: DataCfg = dataclasses.field(default_factory=DataCfg)
  train: TrainCfg = dataclasses.field(default_factory=TrainCfg)
  optim: OptimCfg = dataclasses.field(default_factory=OptimCfg)
  mesh: MeshCfg = dataclasses.field(default_factory=MeshCfg)
  eval: EvalCfg = dataclasses.field(default_factory=EvalCfg)
  checkpoint: CheckpointCfg = dataclasses.field(default_factory=CheckpointCfg)
  run: RunCfg = dataclasses.field(default_factory=RunCfg)
  log: LogCfg = dataclasses.field(default_factory=LogCfg)
  dpo: DpoCfg = dataclasses.field(default_factory=DpoCfg)
  distill: DistillCfg = dataclasses.field(default_factory=DistillCfg)
  demo: DemoCfg = dataclasses.field(default_factory=DemoCfg)

  def __post_init__(self):
    evals = self.has_eval_data or bool(self.eval.prompts) or bool(self.eval.harness_tasks)
    _check(self.train.eval_every == 0 or evals, "train.eval_every",
           "is set but there is nothing to evaluate: data.eval has no sources, data.eval_fraction is 0, and "
           "eval.prompts and eval.harness_tasks are empty")
    _check(self.train.objective != "distill" or bool(self.distill.teacher), "distill.teacher",
           "train.objective is distill but no teacher is set")
    _check(self.model.quantize == "none" or self.lora.rank > 0, "model.quantize",
           f"{self.model.quantize!r} quantizes the frozen base of a LoRA run (QLoRA): set lora.rank > 0")

  @classmethod
  def from_dict(cls, cd: Any) -> "Config":
    """From a ConfigDict (or a plain dict, e.g. a run's config.json), validated; unknown sections and keys
    are errors naming the nearest declared one."""
    d = cd.to_dict() if hasattr(cd, "to_dict") and not isinstance(cd, Mapping) else dict(cd)
    for name in d:
      _check(name in SECTIONS, name, f"unknown section{_nearest(name, SECTIONS)}; known: {sorted(SECTIONS)}")
    return cls(**{name: _section(sec, name, dict(d.get(name) or {})) for name, sec in SECTIONS.items()})

  @property
  def has_eval_data(self) -> bool:
    """Whether held-out examples exist for eval_loss."""
    return bool(self.data.eval) or self.data.eval_fraction > 0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# section name -> its dataclass, in declaration order: the fields of Config are the one list of sections.
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def quantize_format(cfg: Config) -> str | None:
  """model.quantize as the models take it: None for no quantization."""
  return None if cfg.model.quantize == "none" else cfg.model.quantize


def _nearest(name: str, known) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f"; did you mean {close[0]!r}?" if close else ""


def _section(sec: type, name: str, values: dict[str, Any]):
  names = [f.name for f in dataclasses.fields(sec)]
  for k in values:
    _check(k in names, f"{name}.{k}", f"unknown key{_nearest(k, names)} (keys of {name}: {', '.join(names)})")
  if sec is DataCfg:
    for k in ("train", "eval"):
      if k in values:
        values[k] = tuple(_source(f"data.{k}[{i}]", s) for i, s in enumerate(values[k] or ()))
  if sec is LoraCfg and "targets" in values:
    values["targets"] = tuple(values["targets"])
  for f in dataclasses.fields(sec):
    if f.name in values:
      values[f.name] = _typed(f"{name}.{f.name}", f.default, values[f.name])
  return sec(**values)


def _typed(name: str, default: Any, v: Any) -> Any:
  """A value of the declared key's type (ints may stand for floats; nothing else is converted)."""
  if isinstance(default, bool):
    _check(isinstance(v, bool), name, f"must be true or false, got {v!r}")
  elif isinstance(default, int):
    _check(isinstance(v, int) and not isinstance(v, bool), name, f"must be an integer, got {v!r}")
  elif isinstance(default, float):
    _check(isinstance(v, (int, float)) and not isinstance(v, bool), name, f"must be a number, got {v!r}")
    v = float(v)
  elif isinstance(default, str):
    _check(isinstance(v, str), name, f"must be a string, got {v!r}")
  return v


def _source(name: str, s: Any) -> SourceCfg:
  if isinstance(s, SourceCfg):
    return s
  if isinstance(s, str):
    return SourceCfg(path=s)
  _check(isinstance(s, Mapping), name, f"a source is a path or a {{path, format, weight}} dict, got {s!r}")
  names = [f.name for f in dataclasses.fields(SourceCfg)]
  for k in s:
    _check(k in names, f"{name}.{k}", f"unknown key{_nearest(k, names)} (keys of a source: {', '.join(names)})")
  _check("path" in s, name, "a source needs a 'path'")
  return SourceCfg(**{f.name: _typed(f"{name}.{f.name}", f.default, s[f.name]) for f in dataclasses.fields(SourceCfg)
                      if f.name in s})


def default_config():
  """The ConfigDict every config file starts from: every declared key at its default."""
  import ml_collections
  c = ml_collections.ConfigDict()
  for name, sec in SECTIONS.items():
    sub = ml_collections.ConfigDict()
    for f in dataclasses.fields(sec):
      sub[f.name] = f.default
    c[name] = sub
  return c


def declarations() -> list[tuple[str, Any, str, dataclasses.Field]]:
  """(dotted key, default, help, field) of every declared key, in declaration order."""
  return [(f"{name}.{f.name}", f.default, f.metadata["help"], f)
          for name, sec in SECTIONS.items() for f in dataclasses.fields(sec)]


def determinism_keys() -> list[tuple[str, str]]:
  """(section, key) of the keys whose change on resume would change which tokens the run sees."""
  return [tuple(k.split(".")) for k, _, _, f in declarations() if f.metadata["determinism"]]


def _shown(v: Any) -> str:
  return json.dumps(v) if isinstance(v, str) else repr(v)


def _allowed(f: dataclasses.Field) -> str:
  m = f.metadata
  if m["choices"]:
    return " | ".join(map(str, m["choices"]))
  lo = f"> {m['min']}" if m["min_exclusive"] else f">= {m['min']}" if m["min"] is not None else ""
  hi = f"<= {m['max']}" if m["max"] is not None else ""
  return ", ".join(x for x in (lo, hi) if x)


def help_text() -> str:
  """Every key with its default, allowed values and help, for `jaxtune train --help`."""
  lines = []
  for k, default, text, f in declarations():
    allowed = _allowed(f)
    lines.append(f"  {k} = {_shown(default)}" + (f"  [{allowed}]" if allowed else ""))
    lines.append(f"      {text}")
  return "\n".join(lines)


def markdown_table() -> str:
  """The README's table of every key: | key | default | meaning |."""
  rows = ["| key | default | meaning |", "| --- | --- | --- |"]
  for k, default, text, f in declarations():
    allowed = _allowed(f)
    meaning = text + (f" ({allowed})" if allowed and f.metadata["choices"] else "")
    rows.append(f"| `{k}` | `{_shown(default)}` | {meaning.replace('|', '&#124;')} |")
  return "\n".join(rows)


def compute_dtype(name: str):
  """model.dtype as a jnp dtype; "auto" is bfloat16 on accelerators (GPU, TPU) and float32 on CPU."""
  import jax
  import jax.numpy as jnp
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return jnp.dtype(name)


def jnp_dtype(name: str):
  """A dtype key's value (float32, bfloat16, float16) as a jnp dtype."""
  import jax.numpy as jnp
  return jnp.dtype(name)
