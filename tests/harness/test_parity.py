"""jaxtune's model behind lm-eval's LM interface against lm-eval's own Hugging Face backend, on the same
checkpoint and local tasks: every log-likelihood within 1e-4 relative, the same greedy flags, the same
generations, the same task scores. The model is sharded over a (2, 2, 2) mesh of the 8 CPU devices."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import harness_tasks as ht

TASKS = ["tiny_mc", "tiny_mc_greedy", "tiny_gen", "tiny_ppl"]


def _hf_backend(model_dir, tasks_dir, tasks, **kw):
  import lm_eval
  from lm_eval.tasks import TaskManager
  return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", device="cpu",
                                 tasks=tasks, batch_size=3, log_samples=True,
                                 task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False), **kw)


def _bos_tokenizer(model_dir):
  """The model's tokenizer made to prepend BOS, as Llama's do (lm-eval's HF backend keeps such a BOS)."""
  from tokenizers import processors
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(model_dir)
  bos = tok.bos_token
  tok.backend_tokenizer.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])])
  tok.save_pretrained(model_dir)
  assert tok("hi")["input_ids"][0] == tok.bos_token_id


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A tiny Llama whose tokenizer adds BOS, and four local tasks: multiple choice (with few-shot examples from
  a train split), multiple choice between the model's own two greedy tokens and its greedy token then another
  one (is_greedy true / false by one token), generation cut by stop strings taken from the model's replies,
  and rolling perplexity over documents longer than the model's 128-token context."""
  from transformers import AutoTokenizer

  from tests.helpers.hf_models import make_tiny_chat_model
  tmp = tmp_path_factory.mktemp("harness")
  model_dir, _ = make_tiny_chat_model(tmp, "llama")
  _bos_tokenizer(model_dir)
  tok = AutoTokenizer.from_pretrained(model_dir)
  d = tmp / "tasks"
  d.mkdir()
  ht.write_mc_task(d)
  ht.write_rolling_task(d)
  # Phase 1: the model's greedy replies (12 new tokens, the HF backend's) to the generation prompts.
  ht.write_gen_task(d, "tiny_gen_probe", until=("\n\n",))
  replies = [s["filtered_resps"][0] for s in _hf_backend(model_dir, d, ["tiny_gen_probe"])["samples"]["tiny_gen_probe"]]
  ids0 = tok(replies[0], add_special_tokens=False)["input_ids"]
  one_token = tok.decode(ids0[3:4])  # ends a reply at one ordinary token
  several = replies[1][4:7]  # a multi-token stop string inside another reply
  until = ("\n\n", one_token, several)
  cut = [_cut(r, until) for r in replies]
  assert any(c != r for c, r in zip(cut, replies)), "no stop string cuts a reply"
  docs = [{**doc, "answer": cut[i] if i % 2 == 0 else "x"} for i, doc in enumerate(ht.gen_docs())]
  ht.write_gen_task(d, docs=docs, until=until)
  # Multiple choice built from the model's own next tokens, glued to the prompt (no target delimiter): its two
  # greedy tokens (is_greedy true), the first greedy token then the runner-up (exactly one token off: false).
  mc = []
  for doc in ht.gen_docs(64):  # the first 8 prompts whose two greedy tokens survive tokenizing their text
    pair = _greedy_and_one_off(model_dir, tok, doc["question"])
    if pair is not None and doc["question"] not in {m["question"] for m in mc}:
      mc.append({"question": doc["question"], "choices": [*pair, "zz"], "answer": 0})
  mc = mc[:8]
  assert len(mc) == 8
  (d / "mc_greedy_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
  data = d / "mc_greedy_test.jsonl"
  (d / "tiny_mc_greedy.yaml").write_text(
      f"task: tiny_mc_greedy\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
      "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Q: {{question}}\\nA:\"\n"
      "target_delimiter: \"\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
      "metric_list:\n  - metric: acc\n")
  ref = _hf_backend(model_dir, d, TASKS)
  return model_dir, d, ref, cut


def _greedy_and_one_off(model_dir, tok, question):
  """(text of the model's two greedy next tokens, text of its greedy token then another one) after the prompt
  "Q: {question}\nA:", each tokenizing back to exactly those tokens after the prompt (the other token is the
  most likely one that does); None when the greedy text does not."""
  import torch
  model = _torch_model(model_dir)
  ctx = f"Q: {question}\nA:"
  ctx_ids = tok(ctx)["input_ids"]

  def ranked(ids):
    with torch.no_grad():
      return torch.argsort(model(torch.tensor([ids])).logits[0, -1], descending=True).tolist()

  def text_of(cont):  # the text whose tokens after the prompt are `cont`, or None
    text = tok.decode(cont)
    whole = tok(ctx + text)["input_ids"]
    return text if whole[:len(ctx_ids)] == ctx_ids and whole[len(ctx_ids):] == cont else None

  g1 = ranked(ctx_ids)[0]
  second = ranked(ctx_ids + [g1])
  greedy = text_of([g1, second[0]])
  other = next((t for t in (text_of([g1, x]) for x in second[1:50]) if t is not None), None)
  return (greedy, other) if greedy is not None and other is not None else None


_TORCH = {}


def _torch_model(model_dir):
  import torch
  import transformers
  if model_dir not in _TORCH:
    _TORCH[model_dir] = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  return _TORCH[model_dir]


def _cut(text, until):
  from lm_eval.models.utils import postprocess_generated_text
  return postprocess_generated_text(text, list(until), None)


@pytest.fixture(scope="module")
def ours(setup):
  from jaxtune import harness
  from jaxtune import mesh as mesh_lib
  model_dir, d, _, _ = setup
  return harness.evaluate_model(str(model_dir), ",".join(TASKS), include_path=str(d), log_samples=True,
                                batch_size=3, mesh=mesh_lib.make_mesh(2, 2, 2), dtype="float32")


def _rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def test_loglikelihoods_and_greedy_flags_equal_the_hf_backend(setup, ours):
  _, _, ref, _ = setup
  worst = 0.0
  for task in ("tiny_mc", "tiny_mc_greedy", "tiny_ppl"):
    assert len(ours["samples"][task]) == len(ref["samples"][task]) > 0
    for a, b in zip(ours["samples"][task], ref["samples"][task]):
      assert a["arguments"] == b["arguments"]
      for (ra,), (rb,) in zip(a["resps"], b["resps"]):
        ra, rb = (ra if isinstance(ra, tuple) else (ra, None)), (rb if isinstance(rb, tuple) else (rb, None))
        worst = max(worst, _rel(ra[0], rb[0]))
        assert ra[1] == rb[1], (task, a["arguments"])
  assert ours["samples"]["tiny_mc"][0]["arguments"][0][0].count("Question:") == 3  # two few-shot examples
  assert worst <= 1e-4, worst
  flags = [[r[0][1] for r in sample["resps"]] for sample in ours["samples"]["tiny_mc_greedy"]]
  assert flags == [[True, False, False]] * 8, flags  # greedy; one token off; other tokens
  print(f"max relative log-likelihood difference vs lm-eval's HF backend: {worst:.2e}")


def test_greedy_generations_equal_the_hf_backend(setup, ours):
  _, _, ref, cut = setup
  got = [s["filtered_resps"][0] for s in ours["samples"]["tiny_gen"]]
  assert got == [s["filtered_resps"][0] for s in ref["samples"]["tiny_gen"]]
  assert got == cut  # the phase-1 replies cut at the stop strings


def test_task_scores_equal_the_hf_backend(setup, ours):
  _, _, ref, _ = setup
  for task in TASKS:
    for k, v in ref["results"][task].items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        assert _rel(float(ours["results"][task][k]), float(v)) <= 1e-4, (task, k, ours["results"][task][k], v)
  assert ours["results"]["tiny_gen"]["exact_match,none"] == 0.5  # the even documents' targets are the replies


def test_summary_names_every_metric(ours):
  from jaxtune.harness.run import summary
  s = summary(ours)
  assert s["eval_tiny_mc_acc"] == ours["results"]["tiny_mc"]["acc,none"]
  assert {"eval_tiny_mc_acc_norm", "eval_tiny_gen_exact_match", "eval_tiny_ppl_word_perplexity",
          "eval_tiny_ppl_bits_per_byte"} <= set(s)
  assert not any("stderr" in k for k in s)


def test_stop_ids_are_eos_and_single_ordinary_tokens(tmp_path):
  """Decoding stops early only where the HF backend's text would be cut anyway: at the declared eos ids and at
  stop strings that are one ordinary token and inside no other stop string."""
  from jaxtune.harness.lm import JaxtuneLM
  from tests.helpers.tokenizers import make_tokenizer
  _, tok = make_tokenizer(str(tmp_path))
  ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
  one = [s for s in map(tok.decode, ([t] for t in range(len(tok)) if t not in tok.all_special_ids))
         if len(s.strip()) >= 2 and len(ids(s)) == 1]
  several = "Thank you, merci"
  assert one and len(ids(several)) > 1
  lm = JaxtuneLM(model=None, tokenizer=tok, stop_ids=[7], hf_config={"max_position_embeddings": 64})
  assert lm._stop_ids([one[0], several, tok.eos_token]) == sorted({7, *ids(one[0])})
  assert ids(one[0])[0] not in lm._stop_ids([one[0], f"{one[0]}!"])  # "X!" may start where "X" does
  assert lm.max_length == 64 and lm.prefix_token_id == tok.bos_token_id
