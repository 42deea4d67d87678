"""Preference pairs: record forms, masks that decode to exactly the final reply, prompt checks, fitting to
seq_len, and the pipeline that never splits a pair."""

import json

import numpy as np
import pytest

from jaxtune.config import DataCfg, SourceCfg
from jaxtune.data import chat, preference
from jaxtune.data.examples import load_examples
from jaxtune.data.pipeline import build_pipeline
from jaxtune.data.records import MalformedRecord, detect_format
from tests.data.conftest import write_jsonl

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731
EOT = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}


def pair_records(n=12):
  """Every record form, deterministic: explicit, implicit (with an earlier exchange), plain strings."""
  out = []
  for i in range(n):
    q, good, bad = f"What is {i} + 2?", f"It is {i + 2}.", f"It is {i + 3}, I think."
    if i % 3 == 0:
      out.append({"prompt": [S("Be exact."), U(q)], "chosen": [A(good)], "rejected": [A(bad)]})
    elif i % 3 == 1:
      head = [U("Hi."), A("Hello!"), U(q)]
      out.append({"chosen": head + [A(good)], "rejected": head + [A(bad)]})
    else:
      out.append({"prompt": q, "chosen": good, "rejected": bad, "system": "Be exact."})
  return out


def test_record_forms():
  explicit, implicit, strings = pair_records(3)
  p = preference.to_pair(explicit)
  assert p.prompt == [S("Be exact."), U("What is 0 + 2?")] and p.chosen == [A("It is 2.")]
  p = preference.to_pair(implicit)
  assert p.prompt == [U("Hi."), A("Hello!"), U("What is 1 + 2?")] and p.rejected == [A("It is 4, I think.")]
  p = preference.to_pair(strings)
  assert p.prompt == [S("Be exact."), U("What is 2 + 2?")] and p.chosen == [A("It is 4.")]
  assert all(detect_format(r) == "preference" for r in (explicit, implicit, strings))


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen_equals_rejected"),
    ({"chosen": [U("a"), A("x")], "rejected": [U("b"), A("y")]}, "implicit_prompt_mismatch"),
    ({"chosen": [U("a"), A("x")], "rejected": [U("a")]}, "implicit_prompt_mismatch"),
    ({"prompt": [A("no user")], "chosen": "x", "rejected": "y"}, "no_prompt"),
    ({"prompt": "q", "chosen": [U("not a reply")], "rejected": "y"}, "bad_schema"),
    ({"prompt": "q", "chosen": 3, "rejected": "y"}, "bad_schema"),
    ({"prompt": "q", "chosen": "  ", "rejected": "y"}, "empty_content"),
    ({"prompt": "q", "chosen": "x"}, "not_a_pair"),
    (["a list"], "not_an_object"),
])
def test_malformed_pairs_name_the_reason(record, reason):
  with pytest.raises(MalformedRecord) as e:
    preference.to_pair(record)
  assert e.value.reason == reason


def trained(tok, ids, mask):
  return tok.decode(ids[mask.astype(bool)].tolist())


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_trained_tokens_are_the_final_reply_and_end_of_turn(name, request):
  tok = request.getfixturevalue(f"{name}_tok")
  pairs = [preference.to_pair(r) for r in pair_records(6)]
  for p, res in zip(pairs, preference.encode_pairs(pairs, tok)):
    c_ids, c_mask, r_ids, r_mask, n = res
    rendered_c = tok.apply_chat_template(p.prompt + p.chosen, tokenize=False)
    assert tok.decode(c_ids.tolist()) == rendered_c
    # exactly the final reply plus end-of-turn: no BOS, no header, no earlier turn inside
    assert trained(tok, c_ids, c_mask) == p.chosen[-1]["content"] + EOT[name]
    assert trained(tok, r_ids, r_mask) == p.rejected[-1]["content"] + EOT[name]
    trained_ids = set(c_ids[c_mask > 0].tolist()) | set(r_ids[r_mask > 0].tolist())
    assert tok.bos_token_id not in trained_ids
    assert not (trained_ids & set(tok.convert_tokens_to_ids(["<|start_header_id|>", "<|im_start|>"])) - {None})
    # the prompt: identical on both sides, what generation sees, nothing trained in it
    prompt = tok.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=False)
    assert tok.decode(c_ids[:n].tolist()) == prompt == tok.decode(r_ids[:n].tolist())
    assert not c_mask[:n].any() and not r_mask[:n].any()
    assert c_mask[n:].all() if name == "llama3" else c_mask[n:-1].all()  # chatml: the "\n" after <|im_end|>


# A Mistral-v0.3-like template: the system prompt is rendered only when the last message is the user's, so a
# conversation ending with a reply loses it and its prompt tokens differ from the prompt's own rendering.
DROPS_SYSTEM = (
    "{%- for m in messages %}{%- if m['role'] == 'system' %}"
    "{%- if messages[-1]['role'] == 'user' %}{{ '[SYS]' + m['content'] + '[/SYS]' }}{%- endif %}"
    "{%- elif m['role'] == 'user' %}{{ '<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>assistant\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def test_a_template_that_renders_the_prompt_differently_drops_the_pair(chatml_tok, tmp_path):
  tok = chat.load_tokenizer(chatml_tok.name_or_path)
  tok.chat_template = DROPS_SYSTEM
  with_system = preference.to_pair({"prompt": "q", "chosen": "a", "rejected": "b", "system": "Be brief."})
  without = preference.to_pair({"prompt": "q", "chosen": "a", "rejected": "b"})
  bad, good = preference.encode_pairs([with_system, without], tok)
  assert isinstance(bad, chat.DropExample) and bad.reason == "prompt_mismatch"
  assert not isinstance(good, chat.DropExample)
  path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "system": "s"},
                                             {"prompt": "q", "chosen": "a", "rejected": "b"}])
  store, stats = load_examples([SourceCfg(path=path, format="preference")], tok, seq_len=64, preference=True)
  assert len(store) == 1 and stats.dropped_by_reason == {"prompt_mismatch": 1}
  from jaxtune.errors import DataError
  with pytest.raises(DataError, match=f"{path}:1.*prompt_mismatch"):
    load_examples([SourceCfg(path=path, format="preference")], tok, seq_len=64, preference=True, strict=True)


def test_fit_pair_cuts_prompts_from_the_left_never_replies():
  ids = lambda n, base: np.arange(base, base + n, dtype=np.int32)  # noqa: E731
  c_ids, r_ids = ids(10, 100), ids(8, 200)
  c_mask = np.r_[np.zeros(6), np.ones(4)].astype(np.int32)  # prompt 6, reply 4
  r_mask = np.r_[np.zeros(6), np.ones(2)].astype(np.int32)
  same = preference.fit_pair(c_ids, c_mask, r_ids, r_mask, 6, seq_len=18, packed=True, overlong="drop")
  assert same[-1] is False and same[0] is c_ids
  with pytest.raises(chat.DropExample, match="overlong"):
    preference.fit_pair(c_ids, c_mask, r_ids, r_mask, 6, seq_len=14, packed=True, overlong="drop")
  c2, cm2, r2, rm2, cut = preference.fit_pair(c_ids, c_mask, r_ids, r_mask, 6, seq_len=14, packed=True,
                                             overlong="truncate")
  assert cut and len(c2) + len(r2) <= 14 and len(c_ids) - len(c2) == len(r_ids) - len(r2) == 2
  np.testing.assert_array_equal(c2[cm2 > 0], c_ids[c_mask > 0])  # the replies are whole
  np.testing.assert_array_equal(r2[rm2 > 0], r_ids[r_mask > 0])
  c3, _, r3, _, _ = preference.fit_pair(c_ids, c_mask, r_ids, r_mask, 6, seq_len=9, packed=False, overlong="truncate")
  assert len(c3) == 9 and len(r3) == 7  # unpacked: each side fits a row on its own
  with pytest.raises(chat.DropExample, match="replies alone"):
    preference.fit_pair(c_ids, c_mask, r_ids, r_mask, 6, seq_len=7, packed=True, overlong="truncate")


def pairs_of(batch):
  """The (chosen ids, rejected ids) of every pair in a batch, read the way the DPO loss reads them: the
  segment slots [rows, S] flattened, two at a time."""
  rows, S = batch["seq_ids"].shape
  seqs = {}
  for r in range(rows):
    for s in range(S):
      if batch["seq_ids"][r, s] >= 0:
        seqs[r * S + s] = tuple(batch["input_ids"][r][batch["segment_ids"][r] == s + 1].tolist())
  out = []
  for k in range(0, rows * S, 2):
    assert (k in seqs) == (k + 1 in seqs), "half a pair in a batch"
    if k in seqs:
      assert batch["seq_ids"].reshape(-1)[k] + 1 == batch["seq_ids"].reshape(-1)[k + 1]  # chosen, then its rejected
      out.append((seqs[k], seqs[k + 1]))
  return out


@pytest.mark.parametrize("packing", [True, False])
def test_pipeline_keeps_pairs_whole(packing, llama3_tok, tmp_path):
  path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(24))
  cfg = DataCfg(train=(SourceCfg(path=path, format="auto"),), seq_len=256, packing=packing)
  pipe = build_pipeline(cfg, llama3_tok, batch_size=4, seed=0, preference=True)
  assert pipe.group == 2 and len(pipe.store) == 24 and pipe.stats.examples == 24
  want = {tuple(pipe.store.unit(i)[0][1].tolist()): tuple(pipe.store.unit(i)[1][1].tolist()) for i in range(24)}
  seen = [p for b in pipe.one_pass() for p in pairs_of(b)]  # every pair exactly once
  assert sorted(seen) == sorted(want.items())
  it = pipe.iterator()
  for _ in range(12):  # training batches: whole pairs only, each a real (chosen, rejected) of the data
    batch = next(it)
    assert batch["input_ids"].shape == (4, 256)
    for c, r in pairs_of(batch):
      assert want[c] == r
    if not packing:  # a side per row: rows 2i and 2i+1 are a pair
      assert (batch["seq_ids"][0::2, 0] + 1 == batch["seq_ids"][1::2, 0]).all()
  if packing:
    assert pipe.packer.segments >= 2 and (pipe.packer.segments % 2 == 0)


def test_values_follow_their_sequences(llama3_tok, tmp_path):
  path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(8))
  pipe = build_pipeline(DataCfg(train=(SourceCfg(path=path),), seq_len=256), llama3_tok, batch_size=2, seed=1,
                        preference=True)
  values = np.arange(16, dtype=np.float32) * 0.5 - 3
  pipe.set_values(values)
  for batch in pipe.one_pass():
    sel = batch["seq_ids"] >= 0
    np.testing.assert_array_equal(batch["ref_logps"][sel], values[batch["seq_ids"][sel]])
    assert (batch["ref_logps"][~sel] == 0).all()


def test_sft_refuses_preference_records(llama3_tok, tmp_path):
  from jaxtune.errors import DataError
  path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(2))
  with pytest.raises(DataError, match=r"preference_record: 2 .*train.objective=dpo"):
    load_examples([SourceCfg(path=path)], llama3_tok, seq_len=128)


def test_inspect_json_gives_one_object_per_pair(tiny_dpo):
  from tests.helpers.cli import jaxtune
  p = jaxtune("data", "inspect", tiny_dpo.config, "--n", "3", "--json")
  rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
  assert len(rows) == 3 and all(set(r) == {"chosen", "rejected"} for r in rows)
  for r in rows:
    for side in r.values():
      assert set(side) == {"input_ids", "loss_mask"} and len(side["input_ids"]) == len(side["loss_mask"])
      assert sum(side["loss_mask"]) > 0
  p = jaxtune("data", "stats", tiny_dpo.config, "--json")
  s = json.loads(p.stdout.strip().splitlines()[-1])
  assert s["examples"] == tiny_dpo.pairs and s["dropped_by_reason"] == {"chosen_equals_rejected": 1}
  assert 0 < s["packing_efficiency"] <= 1 and s["loss_tokens"] < s["tokens"]


def test_tokenized_cache_keeps_pairs(llama3_tok, tmp_path, monkeypatch):
  from jaxtune.data import pipeline
  path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(6))
  cfg = DataCfg(train=(SourceCfg(path=path),), seq_len=256, cache_dir=str(tmp_path / "cache"))
  first = build_pipeline(cfg, llama3_tok, batch_size=2, seed=0, preference=True)
  monkeypatch.setattr(pipeline, "load_examples", lambda *a, **k: pytest.fail("tokenized again"))
  again = build_pipeline(cfg, llama3_tok, batch_size=2, seed=0, preference=True)
  assert again.store.group == 2 and len(again.store) == len(first.store) == 6
  for i in range(6):
    for (j, a, m), (k, b, n) in zip(first.store.unit(i), again.store.unit(i)):
      assert j == k and np.array_equal(a, b) and np.array_equal(m, n)
