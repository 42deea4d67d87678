"""The `jaxtune` command line: thin; parses, builds, calls."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _load_config(argv: list[str]):
  """ml-collections config file + `--config.a.b=v` overrides -> validated Config."""
  from absl import flags
  from ml_collections import config_flags

  from jaxtune.config import Config

  if "-h" in argv or "--help" in argv:
    print("usage: jaxtune train --config PATH[:ARG] [--config.KEY=VALUE ...]\n"
          "  PATH: an ml-collections config file (configs/*.py); keys and defaults: jaxtune/config.py")
    raise SystemExit(0)
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml-collections config file (configs/*.py)",
                                  flag_values=fv, lock_config=True, sys_argv=["jaxtune"] + argv)
  try:
    fv(["jaxtune"] + argv)
  except AttributeError as e:  # a typo'd key under --config.
    bad = [a for a in argv if a.startswith("--config.")]
    raise SystemExit(f"error: unknown config key in {' '.join(bad)}: {str(e).strip(chr(39))}") from None
  except flags.Error as e:
    raise SystemExit(f"error: {e}") from None
  if fv.config is None:
    raise SystemExit("error: --config PATH is required")
  return Config.from_dict(fv.config)


def _maybe_init_distributed() -> None:
  from jaxtune.distributed import maybe_initialize
  maybe_initialize()


def cmd_train(argv: list[str]) -> int:
  from jaxtune.config import ConfigError
  try:
    cfg = _load_config(argv)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  _maybe_init_distributed()
  from jaxtune.train.loop import train

  if cfg.demo.enabled:
    return _train_demo(cfg)
  train(cfg)
  return 0


def _train_demo(cfg) -> int:
  import jaxtune
  from jaxtune import demo
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.train.loop import train

  t0 = time.perf_counter()
  demo.prepare(cfg)
  tokenizer = load_tokenizer(cfg.model.path)
  base = jaxtune.load_pretrained(cfg.model.path)
  before = demo.report_before(cfg, base, tokenizer)
  del base
  result = train(cfg)
  out = os.path.join(cfg.run.dir, "hf")
  model = result.model()
  jaxtune.save_pretrained(model, out, tokenizer=result.tokenizer)
  after = demo.report_after(cfg, model, result.tokenizer, out, samples=result.samples)
  print(f"demo: held-out exact match {before:.1%} before -> {after:.1%} after tuning, "
        f"in {time.perf_counter() - t0:.0f}s; tuned model exported to {os.path.abspath(out)}", flush=True)
  return 0


def cmd_export(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog="jaxtune export", description="Write a run's checkpoint as an HF model dir.")
  p.add_argument("--run", required=True, help="run directory (RUN_DIR)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", required=True, help="output HF model directory")
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                 help="tensor dtype to write (default: the params' dtype)")
  p.add_argument("--adapter-only", action="store_true",
                 help="LoRA runs: write a PEFT adapter instead of the merged model")
  a = p.parse_args(argv)
  _maybe_init_distributed()
  from jaxtune.export import export_run
  out = export_run(a.run, a.out, step=a.step, dtype=a.dtype, adapter_only=a.adapter_only)
  print(f"exported {a.run} -> {os.path.abspath(out)}")
  return 0


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
  if a.temperature < 0 or not 0.0 < a.top_p <= 1.0 or a.top_k < 0:
    raise SystemExit("error: need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
  import jaxtune
  from jaxtune import rundir
  from jaxtune.data.chat import load_tokenizer
  from jaxtune.generate import generate, stop_token_ids

  if rundir.exists(rundir.join(a.model, "checkpoints")):  # a run dir, local or remote (gs://...)
    from jaxtune.export import restore_model
    from jaxtune.train.loop import HF_SOURCE
    model, _, _ = restore_model(a.model)
    model_dir = rundir.local_copy(rundir.join(a.model, HF_SOURCE))
  else:
    from jaxtune.weights.hf_load import resolve_model_dir
    model_dir = str(resolve_model_dir(a.model))
    model = jaxtune.load_pretrained(model_dir)
  tokenizer = load_tokenizer(model_dir, a.chat_template)
  from jaxtune.models.resize import grow_for_tokenizer
  grow_for_tokenizer(model, tokenizer)  # tokens --chat-template added, as training would
  if a.prompt is not None:
    prompts = [[{"role": "user", "content": a.prompt}]]
  else:  # the eval.prompts forms; a bad line is an error naming file:line
    from jaxtune.train.prompt_eval import read_eval_prompts
    prompts = [p.messages for p in read_eval_prompts(a.prompts, strict=True)]
  if a.system:
    prompts = [[{"role": "system", "content": a.system}] + m for m in prompts]
  outs = generate(model, tokenizer, prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                  top_p=a.top_p, top_k=a.top_k, seed=a.seed, stop_ids=stop_token_ids(tokenizer, model_dir))
  for conv, out in zip(prompts, outs):
    if a.json:
      print(json.dumps({"prompt": conv[-1]["content"], "completion": out["completion"],
                        "completion_ids": out["completion_ids"]}))
    else:
      print(f">>> {conv[-1]['content']}\n{out['completion']}\n")
  return 0


def cmd_data(argv: list[str]) -> int:
  if not argv or argv[0] not in ("stats", "inspect"):
    raise SystemExit("usage: jaxtune data {stats,inspect} --config PATH [--json] [--n N]")
  sub, rest = argv[0], argv[1:]
  p = argparse.ArgumentParser(prog=f"jaxtune data {sub}")
  p.add_argument("--json", action="store_true")
  p.add_argument("--n", type=int, default=5)
  a, cfg_argv = p.parse_known_args(rest)
  from jaxtune.config import ConfigError
  try:
    cfg = _load_config(cfg_argv)
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None
  from jaxtune.data import report
  if sub == "stats":
    s = report.stats(cfg)
    if a.json:
      print(json.dumps(s))
    else:
      for k, v in s.items():
        print(f"{k:>20}: {v}")
    return 0
  examples = report.inspect(cfg, a.n)
  if a.json:
    for ex in examples:
      print(json.dumps({"input_ids": ex["input_ids"], "loss_mask": ex["loss_mask"]}))
  else:
    from jaxtune.data.chat import load_tokenizer
    tok = load_tokenizer(cfg.model.path, cfg.data.chat_template)
    for i, ex in enumerate(examples):
      print(f"--- example {i} ({len(ex['input_ids'])} tokens, {sum(ex['loss_mask'])} trained) ---")
      print(report.render_example(tok, ex["input_ids"], ex["loss_mask"]))
  return 0


COMMANDS = {"train": cmd_train, "export": cmd_export, "generate": cmd_generate, "data": cmd_data}


def _user_errors() -> tuple[type[BaseException], ...]:
  """Errors that describe bad input: printed as one line, no traceback (JAXTUNE_LOG=DEBUG shows it)."""
  from jaxtune.config import ConfigError
  from jaxtune.data.chat import DropExample
  from jaxtune.data.examples import DataError
  from jaxtune.data.templates import TemplateError
  from jaxtune.train.loop import TrainingError
  from jaxtune.weights.hf_load import CheckpointError
  return (ConfigError, DataError, DropExample, TemplateError, TrainingError, CheckpointError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=os.environ.get("JAXTUNE_LOG", "WARNING"))
  if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
    print("usage: jaxtune {train,export,generate,data} ...\n"
          "  train    --config PATH [--config.KEY=VALUE ...]\n"
          "  export   --run RUN_DIR [--step N] --out HF_DIR [--dtype bfloat16|float32]\n"
          "  generate --model HF_DIR_or_RUN_DIR --prompt TEXT [--max-new-tokens N]\n"
          "  data     {stats,inspect} --config PATH [--json] [--n N]", file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  try:
    return COMMANDS[argv[0]](argv[1:]) or 0
  except SystemExit:  # --help, usage and config errors: matched before _user_errors() imports jax
    raise
  except _user_errors() as e:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
      raise
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
