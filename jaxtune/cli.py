"""The `jaxtune` command line: thin; parses, builds, calls.

Bad input (any `jaxtune.errors.UserError`) ends the command with one `error: ...`
line and exit status 1, as does a fault of the machine (a full disk, a read-only
file system: an OSError with one of ENVIRONMENT_ERRNOS); anything else is a bug,
printed with its traceback under a line that says so (exit status 3).
JAXTUNE_LOG=DEBUG shows the traceback of every error. `--help`, usage and config
errors are answered before jax loads.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib.util
import json
import logging
import math
import os
import sys
import traceback

from jaxtune.errors import ConfigError, UsageError, UserError

log = logging.getLogger("jaxtune.cli")


# -- config files ------------------------------------------------------------------------------------------


def _file_line(tb, path: str) -> str:
  """`path:line` of the innermost frame of a traceback that is in `path`, else `path`."""
  line = None
  for frame in traceback.extract_tb(tb):
    if os.path.abspath(frame.filename) == os.path.abspath(path):
      line = frame.lineno
  return f"{path}:{line}" if line else path


def load_config_file(spec: str):
  """The ConfigDict of `PATH[:ARG]` (`get_config()` or `get_config(ARG)` of the file); every failure is a
  ConfigError naming the file (and line)."""
  return load_config_module(spec)[1]


def load_config_module(spec: str):
  """(the config file's module, its ConfigDict): the module also holds a recipe's hardware constants
  (`TOPOLOGY`, `ACCELERATOR`, `CHIPS`)."""
  import ml_collections
  path, sep, arg = spec.partition(":")
  if not path:
    raise ConfigError("--config needs a path to a config file (configs/*.py)")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist" + (" (it is a directory)" if os.path.isdir(path) else ""))
  name = "jaxtune_config_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - the config file's own code failed
    raise ConfigError(f"{_file_line(e.__traceback__, path)}: loading the config file raised "
                      f"{type(e).__name__}: {e}") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path} has no get_config() function")
  call = f"get_config({arg!r})" if sep else "get_config()"
  try:
    cd = get_config(arg) if sep else get_config()
  except Exception as e:  # noqa: BLE001 - the config file's own code failed
    raise ConfigError(f"{_file_line(e.__traceback__, path)}: {call} raised {type(e).__name__}: {e}") from None
  if not isinstance(cd, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned a {type(cd).__name__}, not an ml_collections ConfigDict")
  return module, cd


def _split_config_args(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
  """(--config PATH, the --config.KEY=VALUE overrides, everything else)."""
  path, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a == "--config" and i + 1 < len(argv):
      path, i = argv[i + 1], i + 2
      continue
    if a.startswith("--config="):
      path = a[len("--config="):]
    elif a.startswith("--config."):
      if "=" not in a and i + 1 < len(argv):  # --config.KEY VALUE
        a, i = f"{a}={argv[i + 1]}", i + 1
      overrides.append(a)
    else:
      rest.append(a)
    i += 1
  return path, overrides, rest


def load_config(argv: list[str], *, usage: str = "jaxtune train"):
  """`--config PATH[:ARG] [--config.KEY=VALUE ...]` -> a validated Config. A typo'd key names the nearest
  declared one; a value of the wrong type names the key and the type."""
  from jaxtune.config import Config

  path, overrides, rest = _split_config_args(argv)
  if rest:
    raise UsageError(f"{usage}: unexpected arguments {rest}; settings are --config.KEY=VALUE")
  if path is None:
    raise UsageError(f"{usage}: --config PATH is required (a config file, e.g. configs/tiny.py)")
  cd = load_config_file(path)
  _check_declared(cd, path.partition(":")[0])
  return Config.from_dict(apply_overrides(cd, overrides))


def apply_overrides(cd, overrides: list[str]):
  """The ConfigDict `cd` with `--config.KEY=VALUE` overrides applied (ml-collections' parsing and types); a
  typo'd key names the nearest declared one."""
  from absl import flags
  from ml_collections import config_flags
  for o in overrides:  # one at a time, so that an error names its own override
    fv = flags.FlagValues()
    try:
      config_flags.DEFINE_config_dict("config", cd, "the config", flag_values=fv, lock_config=True,
                                      sys_argv=["jaxtune", o])
      fv(["jaxtune", o])
    except (AttributeError, KeyError):
      bad = o.split("=", 1)[0][len("--config."):]
      raise ConfigError(f"unknown config key {bad!r} in {o}{_suggest(bad)}") from None
    except flags.Error as e:
      raise ConfigError(f"{o}: {_first_line(str(e))}") from None
    cd = fv.config
  return cd


def _check_declared(cd, path: str) -> None:
  """Every key a config file sets is a declared one; an invented key is named with the file that sets it."""
  from jaxtune.config import declarations
  declared = {k for k, *_ in declarations()}
  sections = {k.split(".")[0] for k in declared}
  for section, values in cd.items():
    keys = [section] if section not in sections or not hasattr(values, "keys") else [
        f"{section}.{k}" for k in values.keys()]
    for k in keys:
      if k not in declared:
        raise ConfigError(f"{path}: get_config() sets {k!r}, which is not a config key{_suggest(k)}")


def _first_line(msg: str) -> str:
  """The useful line of an absl flag error (its last line when it carries a traceback), without the
  `flag --config.x=y: ` prefix."""
  msg = msg.strip()
  line = msg.splitlines()[-1] if "Traceback" in msg else msg.splitlines()[0]
  return line.split(": ", 1)[1] if line.startswith("flag --") and ": " in line else line


def _suggest(key: str) -> str:
  from jaxtune.config import declarations
  close = difflib.get_close_matches(key, [k for k, *_ in declarations()], n=1, cutoff=0.6)
  return f"; did you mean {close[0]!r}?" if close else ""


def _maybe_init_distributed() -> None:
  from jaxtune.distributed import maybe_initialize
  maybe_initialize()


# -- commands ----------------------------------------------------------------------------------------------


def cmd_train(argv: list[str]) -> int:
  if "-h" in argv or "--help" in argv:
    from jaxtune.config import help_text
    print("usage: jaxtune train --config PATH[:ARG] [--config.KEY=VALUE ...]\n"
          "  PATH: an ml-collections config file (configs/*.py) whose get_config() starts from\n"
          "  jaxtune.config.default_config(). Every key, its default and what it does:\n")
    print(help_text())
    return 0
  cfg = load_config(argv)
  _maybe_init_distributed()
  from jaxtune.train.loop import train
  if cfg.demo.enabled:
    from jaxtune.demo import flows
    return flows.run(cfg, train)
  train(cfg)
  return 0


def cmd_config(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxtune config", description="Print the resolved config of a config file "
                              "with its overrides (as JSON).")
  p.add_argument("--keys", action="store_true", help="list every declared key with its default and help instead")
  a, cfg_argv = p.parse_known_args(argv)
  from jaxtune.config import help_text
  if a.keys:
    print(help_text())
    return 0
  cfg = load_config(cfg_argv, usage="jaxtune config")
  print(json.dumps(cfg.to_dict(), indent=2))
  return 0


def cmd_export(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxtune export", description="Write a run's checkpoint as an HF model dir.")
  p.add_argument("--run", required=True, help="run directory (RUN_DIR)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", required=True, help="output HF model directory (new or empty, or see --overwrite)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a non-empty --out that holds a model export (written aside, then swapped in)")
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                 help="tensor dtype to write (default: the params' dtype)")
  p.add_argument("--adapter-only", action="store_true",
                 help="LoRA runs: write a PEFT adapter instead of the merged model")
  a = p.parse_args(argv)
  _maybe_init_distributed()
  from jaxtune.export import export_run
  out = export_run(a.run, a.out, step=a.step, dtype=a.dtype, adapter_only=a.adapter_only, overwrite=a.overwrite)
  log.info("exported %s -> %s", a.run, os.path.abspath(out))
  return 0


_GENERATE_CHUNK = 256  # prompts decoded per generate() call by `jaxtune generate --prompts`


def cmd_generate(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxtune generate",
                              description="Chat-templated generation (greedy, or sampled with --temperature > 0).")
  p.add_argument("--model", required=True, help="HF model dir or jaxtune run dir")
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument("--prompt")
  g.add_argument("--prompts", help="JSONL file, one {\"prompt\": ...} or {\"messages\": [...]} per line "
                 "(a trailing assistant turn is dropped)")
  p.add_argument("--system", default=None)
  p.add_argument("--chat-template", default="",
                 help="for models without one: a built-in (llama3, chatml) or a .jinja file")
  p.add_argument("--max-new-tokens", type=int, default=128)
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", action="store_true",
                 help="one JSON object per prompt: prompt, completion, completion_ids")
  a = p.parse_args(argv)
  if not (math.isfinite(a.temperature) and a.temperature >= 0 and 0.0 < a.top_p <= 1.0 and a.top_k >= 0
          and a.max_new_tokens >= 1):
    raise UsageError("need --max-new-tokens >= 1, a finite --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0; "
                     f"got {a.max_new_tokens}, {a.temperature}, {a.top_p}, {a.top_k}")
  from jaxtune import log as log_lib
  from jaxtune.data.prompts import read_prompts
  from jaxtune.generate import generate, load_model

  model, tokenizer, stop_ids = load_model(a.model, a.chat_template)
  if a.prompt is not None:
    prompts = [[{"role": "user", "content": a.prompt}]]
  else:  # every form eval.prompts reads; a bad line is an error naming file:line
    prompts = [p.messages for p in read_prompts(a.prompts, strict=True)]
  if a.system:
    prompts = [[{"role": "system", "content": a.system}] + m for m in prompts]
  outs = []
  bar = log_lib.progress(total=len(prompts), desc="generating", unit="prompt")
  for i in range(0, len(prompts), _GENERATE_CHUNK):  # a few batches at a time, for the progress bar
    outs += generate(model, tokenizer, prompts[i:i + _GENERATE_CHUNK], max_new_tokens=a.max_new_tokens,
                     temperature=a.temperature, top_p=a.top_p, top_k=a.top_k, seed=a.seed + i, stop_ids=stop_ids)
    bar.update(len(outs) - bar.n)
  bar.close()
  for conv, out in zip(prompts, outs):
    if a.json:
      print(json.dumps({"prompt": conv[-1]["content"], "completion": out["completion"],
                        "completion_ids": out["completion_ids"]}))
    else:
      print(f">>> {conv[-1]['content']}\n{out['completion']}\n")
  return 0


_MODEL_KEYS = ("--config.mesh.", "--config.model.dtype=")  # the config keys eval and synth read


def cmd_eval(argv: list[str]) -> int:
  path, overrides, rest = _split_config_args(argv)
  p = argparse.ArgumentParser(
      prog="jaxtune eval", description="Score a model on lm-evaluation-harness tasks with jaxtune's own forward "
      "pass and KV-cache decoding. Mesh: --config.mesh.data/fsdp/tensor=N (default: every device data-parallel); "
      "compute dtype: --config.model.dtype=float32|bfloat16|auto (default: auto, float32 on CPU).")
  p.add_argument("--model", required=True, help="HF model dir, hub id or jaxtune run dir (latest checkpoint)")
  p.add_argument("--tasks", required=True, help="lm-eval task names (or groups, tags, globs), comma-separated")
  p.add_argument("--limit", type=float, default=None, help="documents per task (< 1: a fraction of them)")
  p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
  p.add_argument("--include-path", default="", help="a directory of task YAMLs (local tasks and their data)")
  p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass / decoding batch")
  p.add_argument("--apply-chat-template", action="store_true", help="render prompts with the chat template "
                 "(few-shot examples as turns)")
  p.add_argument("--chat-template", default="", help="for models without one: a built-in (llama3, chatml) or a "
                 ".jinja file")
  p.add_argument("--max-length", type=int, default=None, help="context length (default: the checkpoint's)")
  p.add_argument("--seed", type=int, default=None, help="few-shot sampling and sampled generation seed (default: "
                 "lm-eval's seeds)")
  p.add_argument("--log-samples", action="store_true", help="results.json also holds every request and response")
  p.add_argument("--out", default=None, help="write lm-eval's results as JSON here")
  a = p.parse_args(rest)
  if path is not None or any(not o.startswith(_MODEL_KEYS) for o in overrides):
    raise UsageError("jaxtune eval reads only --config.mesh.data/fsdp/tensor and --config.model.dtype; got "
                     + " ".join(([f"--config {path}"] if path else [])
                                + [o for o in overrides if not o.startswith(_MODEL_KEYS)]))
  if a.batch_size < 1 or (a.limit is not None and a.limit <= 0) or (a.num_fewshot is not None and a.num_fewshot < 0):
    raise UsageError("need --batch-size >= 1, --limit > 0 and --num-fewshot >= 0")
  from jaxtune import harness
  harness.require_lm_eval()
  from jaxtune.config import Config, default_config
  cfg = Config.from_dict(apply_overrides(default_config(), overrides))
  _maybe_init_distributed()
  from jaxtune import mesh as mesh_lib
  limit = int(a.limit) if a.limit is not None and a.limit >= 1 else a.limit
  harness.evaluate_model(a.model, a.tasks, out=a.out, limit=limit, num_fewshot=a.num_fewshot,
                         include_path=a.include_path, batch_size=a.batch_size,
                         apply_chat_template=a.apply_chat_template, chat_template=a.chat_template,
                         log_samples=a.log_samples, max_length=a.max_length, seed=a.seed,
                         mesh=mesh_lib.mesh_from_cfg(cfg.mesh), dtype=cfg.model.dtype)
  return 0


def cmd_plot(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxtune plot", description="Loss, eval loss, learning rate (and DPO reward "
                              "accuracy) by step of one or more runs, overlaid, as a PNG.")
  p.add_argument("runs", nargs="+", metavar="RUN_DIR")
  p.add_argument("--out", default=None, help="the PNG (default: RUN_DIR/curves.png for one run, ./curves.png "
                 "for several)")
  a = p.parse_args(argv)
  from jaxtune.plot import plot_runs
  print(plot_runs(a.runs, a.out))


def cmd_synth(argv: list[str]) -> int:
  path, overrides, rest = _split_config_args(argv)
  p = argparse.ArgumentParser(
      prog="jaxtune synth", description="Teacher generation at scale into `messages` records ready for "
      "`jaxtune train`, with verified filtering; resumable. Mesh: --config.mesh.data/fsdp/tensor=N (default: "
      "every device data-parallel); compute dtype: --config.model.dtype=float32|bfloat16|auto.")
  p.add_argument("--model", required=True, help="teacher: HF model dir, hub id or jaxtune run dir")
  p.add_argument("--prompts", required=True, help="prompts in any form jaxtune train reads (a trailing "
                 "assistant turn is dropped and is the reference unless the record has 'reference')")
  p.add_argument("--out", required=True, help="output JSONL (OUT.jsonl.progress and OUT.jsonl.stats.json beside)")
  p.add_argument("--n", type=int, default=1, help="samples per prompt")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
  p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
  p.add_argument("--max-new-tokens", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--system", default=None, help="a system turn for prompts that have none")
  p.add_argument("--chat-template", default="", help="for models without one: a built-in (llama3, chatml) or "
                 "a .jinja file")
  p.add_argument("--verify", default=None, help="exact | regex:PATTERN | python:MODULE:FUNCTION (default: keep "
                 "every sample)")
  p.add_argument("--keep", default="all", help="all | first | one-per-prompt (samples kept per prompt)")
  p.add_argument("--token-ids", action="store_true", help="records also carry the generated token ids")
  p.add_argument("--batch-size", type=int, default=64, help="rows decoded together, over all devices")
  p.add_argument("--chunk", type=int, default=256, help="prompts read, decoded and written at a time")
  p.add_argument("--strict", action="store_true", help="a malformed prompt record is an error (default: skipped)")
  p.add_argument("--overwrite", action="store_true", help="start again even if OUT holds a previous job")
  a = p.parse_args(rest)
  if path is not None or any(not o.startswith(_MODEL_KEYS) for o in overrides):
    raise UsageError("jaxtune synth reads only --config.mesh.data/fsdp/tensor and --config.model.dtype; got "
                     + " ".join(([f"--config {path}"] if path else [])
                                + [o for o in overrides if not o.startswith(_MODEL_KEYS)]))
  from jaxtune.config import Config, default_config
  from jaxtune.synth.verify import parse_verify
  parse_verify(a.verify)  # a bad spec fails before jax and the model load
  cfg = Config.from_dict(apply_overrides(default_config(), overrides))
  from jaxtune.synth import job
  settings = job.Settings(model=a.model, prompts=a.prompts, n=a.n, temperature=a.temperature, top_p=a.top_p,
                          top_k=a.top_k, max_new_tokens=a.max_new_tokens, seed=a.seed, system=a.system,
                          chat_template=a.chat_template, verify=a.verify, keep=a.keep, token_ids=a.token_ids)
  opts = job.Options(batch_size=a.batch_size, chunk=a.chunk, strict=a.strict, overwrite=a.overwrite)
  _maybe_init_distributed()
  from jaxtune import mesh as mesh_lib
  from jaxtune.generate import load_model
  started = job.Job(settings, a.out, opts)  # a job that cannot resume fails before the model loads
  mesh = mesh_lib.mesh_from_cfg(cfg.mesh)
  model, tokenizer, stop_ids = load_model(a.model, a.chat_template, mesh=mesh, dtype=cfg.model.dtype)
  started.run(model, tokenizer, stop_ids)
  return 0


def cmd_data(argv: list[str]) -> int:
  if not argv or argv[0] not in ("stats", "inspect"):
    raise UsageError("usage: jaxtune data {stats,inspect} --config PATH [--json] [--n N]")
  sub, rest = argv[0], argv[1:]
  p = argparse.ArgumentParser(prog=f"jaxtune data {sub}")
  p.add_argument("--json", action="store_true")
  p.add_argument("--n", type=int, default=5)
  a, cfg_argv = p.parse_known_args(rest)
  cfg = load_config(cfg_argv, usage=f"jaxtune data {sub}")
  from jaxtune.data import report
  if sub == "stats":
    s = report.stats(cfg)
    if a.json:
      print(json.dumps(s))
    else:
      for k, v in s.items():
        print(f"{k:>20}: {v}")
    return 0
  examples = report.inspect(cfg, a.n, color=sys.stdout.isatty())
  tokens = lambda ex: {"input_ids": ex["input_ids"], "loss_mask": ex["loss_mask"]}  # noqa: E731
  for i, ex in enumerate(examples):
    sides = {"chosen": ex["chosen"], "rejected": ex["rejected"]} if "chosen" in ex else {"": ex}
    if a.json:
      print(json.dumps({k: tokens(v) for k, v in sides.items()} if "chosen" in ex else tokens(ex)))
      continue
    for name, side in sides.items():
      label = f"{'pair' if name else 'example'} {i}{' ' + name if name else ''}"
      print(f"--- {label} ({len(side['input_ids'])} tokens, {sum(side['loss_mask'])} trained) ---")
      print(side["text"])
  return 0


PLAN_DOES_NOT_FIT = 4  # exit status of `jaxtune plan` when the plan does not fit (1: bad input, 2: usage)


def cmd_plan(argv: list[str]) -> int:
  path, overrides, rest = _split_config_args(argv)
  p = argparse.ArgumentParser(
      prog="jaxtune plan", description="Per-device memory of a config's train step (params, optimizer state, "
      "gradients, activations) on its mesh for N devices, before launch, and what to change when it does not fit. "
      f"Exit status 0: fits; {PLAN_DOES_NOT_FIT}: does not fit; 1: bad input.")
  p.add_argument("--devices", default=None, help="devices (chips) to plan for (default: the recipe's CHIPS)")
  p.add_argument("--hbm-gb", type=float, default=None, help="memory per device in GB (default: the recipe's "
                 "ACCELERATOR's)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  how = p.add_mutually_exclusive_group()
  how.add_argument("--estimate", action="store_true", help="skip compiling: analytic activations")
  how.add_argument("--compile", action="store_true", help="compile the step even for a large model")
  a = p.parse_args(rest)
  if path is None:
    raise UsageError("jaxtune plan: --config PATH is required (a config file, e.g. configs/tiny.py)")
  from jaxtune.config import Config
  module, cd = load_config_module(path)
  cfg = Config.from_dict(apply_overrides(cd, overrides))
  from jaxtune import plan as plan_lib
  result = plan_lib.plan(cfg, plan_lib.hardware(module, a.devices, a.hbm_gb),
                         compile=False if a.estimate else True if a.compile else None)
  print(json.dumps(result.to_dict()) if a.json else result.text())
  if not result.fits:
    print(f"error: {result.verdict()}", file=sys.stderr)
    return PLAN_DOES_NOT_FIT
  return 0


COMMANDS = {"train": cmd_train, "export": cmd_export, "generate": cmd_generate, "synth": cmd_synth,
            "eval": cmd_eval, "plot": cmd_plot,
            "data": cmd_data, "config": cmd_config, "plan": cmd_plan}
USAGE = """usage: jaxtune [--quiet] COMMAND ...
  train    --config PATH [--config.KEY=VALUE ...]   (jaxtune train --help lists every key)
  export   --run RUN_DIR [--step N] --out HF_DIR [--overwrite] [--dtype bfloat16|float32] [--adapter-only]
  generate --model HF_DIR_or_RUN_DIR (--prompt TEXT | --prompts FILE) [--max-new-tokens N] [--temperature T]
  synth    --model M --prompts SRC --out OUT.jsonl [--n K] [--temperature T] [--top-p P] [--max-new-tokens N]
           [--seed S] [--system S] [--verify exact|regex:PAT|python:mod:fn] [--keep all|first|one-per-prompt]
           [--config.mesh.data|fsdp|tensor=N]   (jaxtune synth --help lists every option)
  eval     --model HF_DIR_or_RUN_DIR --tasks T[,T...] [--limit N] [--num-fewshot K] [--include-path DIR]
           [--batch-size B] [--apply-chat-template] [--out results.json]   (lm-evaluation-harness)
  plot     RUN_DIR [RUN_DIR ...] [--out FILE]   (loss / eval loss / lr curves as a PNG)
  data     {stats,inspect} --config PATH [--json] [--n N]
  config   --config PATH [--config.KEY=VALUE ...]   (the resolved config; --keys: every key)
  plan     --config PATH [--devices N] [--hbm-gb G] [--json] [--estimate|--compile] [--config.KEY=VALUE ...]
           (per-device memory before launch; exit 0 fits, 4 does not)"""


def main(argv: list[str] | None = None) -> int:
  from jaxtune import log as log_lib
  argv = list(sys.argv[1:] if argv is None else argv)
  quiet = "--quiet" in argv
  argv = [a for a in argv if a != "--quiet"]
  log_lib.setup(os.environ.get("JAXTUNE_LOG", "INFO"), quiet=quiet)
  if not argv or argv[0] in ("-h", "--help"):
    print(USAGE, file=sys.stderr if not argv else sys.stdout)
    return 0 if argv else 2
  if argv[0] not in COMMANDS:
    close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
    raise SystemExit(f"error: unknown command {argv[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                     + f"\n{USAGE}")
  try:
    return COMMANDS[argv[0]](argv[1:]) or 0
  except UserError as e:
    if os.environ.get("JAXTUNE_LOG", "").upper() == "DEBUG":
      raise
    raise SystemExit(f"error: {e}") from None
  except (SystemExit, KeyboardInterrupt):
    raise
  except OSError as e:
    if e.errno not in ENVIRONMENT_ERRNOS or os.environ.get("JAXTUNE_LOG", "").upper() == "DEBUG":
      return _internal_error()
    raise SystemExit(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror}") from None
  except Exception:  # noqa: BLE001 - anything else is a bug: say so, with the traceback
    return _internal_error()


# Faults of the machine, not of jaxtune: a full disk, a read-only or vanished file system, a missing permission.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                      errno.ESTALE, errno.ENOTCONN}


def _internal_error() -> int:
  """Prints the exception being handled as a bug, with its traceback; exit status 3."""
  print("error: jaxtune hit an internal error (a bug: please report it with the traceback below)", file=sys.stderr)
  traceback.print_exc()
  return 3


if __name__ == "__main__":
  sys.exit(main())
