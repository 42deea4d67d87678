"""Reasoning, tool calls and dropped messages through templates that behave like the official ones
(tests/data/templates): the trained tokens decode to exactly the expected spans."""

import json

import numpy as np
import pytest

from jaxtune.config import SourceCfg
from jaxtune.data import chat, records
from jaxtune.data.examples import load_examples
from jaxtune.data.messages import Conversation
from tests.data.conftest import write_jsonl
from tests.data.test_chat import _with_template, trained_texts

EOS_DS = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # DeepSeek's end of sentence
S, U, A = "system", "user", "assistant"

REASONING = [
    {"role": S, "content": "Be brief."},
    {"role": U, "content": "2 + 2?"},
    {"role": A, "content": "<think>\nadd them\n</think>\n\nIt is 4."},
    {"role": U, "content": "3 + 3?"},
    {"role": A, "content": "<think>\nadd again\n</think>\n\nIt is 6."},
]
# The same conversation with the reasoning in the field.
REASONING_FIELD = [dict(m) for m in REASONING[:2]] + [
    {"role": A, "content": "It is 4.", "reasoning_content": "add them"}, REASONING[3],
    {"role": A, "content": "It is 6.", "reasoning_content": "add again"}]

# Earlier turns as the template renders them; the final reply from its think tag through end-of-turn.
EXPECTED_REASONING = {
    "qwen3": ["It is 4.<|im_end|>", "<think>\nadd again\n</think>\n\nIt is 6.<|im_end|>"],
    "llama31": ["<think>\nadd them\n</think>\n\nIt is 4.<|eot_id|>",
                "<think>\nadd again\n</think>\n\nIt is 6.<|eot_id|>"],
    "gemma3": ["<think>\nadd them\n</think>\n\nIt is 4.<end_of_turn>",
               "<think>\nadd again\n</think>\n\nIt is 6.<end_of_turn>"],
    # Every turn's reasoning stripped by the template; the final reply follows the generation prompt,
    # which opens the think block itself.
    "deepseek_r1": ["\n\nIt is 4." + EOS_DS, "add again\n</think>\n\nIt is 6." + EOS_DS],
}


@pytest.mark.parametrize("name", sorted(EXPECTED_REASONING))
@pytest.mark.parametrize("form", ["inline", "field"])
def test_reasoning_final_turn_is_trained_from_its_think_tag(name, form, family_tok):
  tok = family_tok(name)
  conv = REASONING if form == "inline" else REASONING_FIELD
  ids, mask = chat.tokenize_messages(conv, tok)
  assert trained_texts(tok, ids, mask) == EXPECTED_REASONING[name]
  ids_last, last = chat.tokenize_messages(conv, tok, mask="last_assistant")
  np.testing.assert_array_equal(ids_last, ids)
  assert trained_texts(tok, ids, last) == EXPECTED_REASONING[name][-1:]


def test_deepseek_final_reply_follows_the_generation_prompt(family_tok):
  tok = family_tok("deepseek_r1")
  ids, mask = chat.tokenize_messages(REASONING, tok)
  prompt = tok.apply_chat_template(REASONING[:-1], tokenize=False, add_generation_prompt=True)
  assert prompt.endswith("<\uff5cAssistant\uff5c><think>\n")
  assert tok.decode(ids.tolist()) == prompt + "add again\n</think>\n\nIt is 6." + EOS_DS
  # mask "none" trains the same text, reasoning included
  ids_all, every = chat.tokenize_messages(REASONING, tok, mask="none")
  np.testing.assert_array_equal(ids_all, ids)
  assert every.all()


@pytest.mark.parametrize("name,expected", [
    ("qwen3", ["It is 4.<|im_end|>", "It is 6.<|im_end|>"]),  # the final reply's empty think block: not trained
    ("deepseek_r1", ["It is 4." + EOS_DS, "It is 6." + EOS_DS]),
    ("llama31", ["It is 4.<|eot_id|>", "It is 6.<|eot_id|>"]),
])
def test_reasoning_drop_trains_the_answers_only(name, expected, family_tok):
  tok = family_tok(name)
  for conv in (REASONING, REASONING_FIELD):
    ids, mask = chat.tokenize_messages(conv, tok, reasoning="drop")
    assert trained_texts(tok, ids, mask) == expected
    assert "add" not in tok.decode(ids.tolist())


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_CHAT = [
    {"role": S, "content": "Be brief."},
    {"role": U, "content": "Weather in Paris?"},
    {"role": A, "content": "", "tool_calls": [{"id": "call00001", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call00001", "content": "{\"temp\": 21, \"sky\": \"sunny\"}"},
    {"role": A, "content": "It is 21 and sunny."},
    {"role": U, "content": "And Rome?"},
    {"role": A, "content": "Let me check.", "tool_calls": [{"id": "call00002", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "tool_call_id": "call00002", "content": "{\"temp\": 25}"},
    {"role": A, "content": "<think>\nThe tool says 25.\n</think>\n\nIt is 25 in Rome."},
]
# The same record in the sharegpt-with-tools form (LLaMA-Factory's): function_call / observation turns.
TOOL_SHAREGPT = {"tools": json.dumps(TOOLS), "conversations": [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": "{\"temp\": 21, \"sky\": \"sunny\"}"},
    {"from": "gpt", "value": "It is 21 and sunny."},
    {"from": "human", "value": "And Rome?"},
    {"from": "gpt", "value": "Let me check."},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Rome"}})},
    {"from": "observation", "value": "{\"temp\": 25}"},
    {"from": "gpt", "value": "<think>\nThe tool says 25.\n</think>\n\nIt is 25 in Rome."},
]}
QWEN_CALL = '<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{}"}}}}\n</tool_call>'
QWEN_TOOLS = [QWEN_CALL.format("Paris") + "<|im_end|>", "It is 21 and sunny.<|im_end|>",
              "Let me check.\n" + QWEN_CALL.format("Rome") + "<|im_end|>",
              "<think>\nThe tool says 25.\n</think>\n\nIt is 25 in Rome.<|im_end|>"]
EXPECTED_TOOLS = {
    # Llama 3.1 writes a tool-call turn as the call alone (its text is not rendered, so not trained).
    "llama31": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is 21 and sunny.<|eot_id|>",
                '{"name": "get_weather", "parameters": {"city": "Rome"}}<|eot_id|>',
                "<think>\nThe tool says 25.\n</think>\n\nIt is 25 in Rome.<|eot_id|>"],
    "qwen25": QWEN_TOOLS,
    "qwen3": QWEN_TOOLS,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_TOOLS))
@pytest.mark.parametrize("form", ["messages", "sharegpt"])
def test_tool_calls_and_answers_are_trained_never_results_or_preamble(name, form, family_tok):
  tok = family_tok(name)
  conv = (records.to_conversation({"messages": TOOL_CHAT, "tools": TOOLS}, "auto") if form == "messages"
          else records.to_conversation(TOOL_SHAREGPT, "auto"))
  ids, mask = chat.tokenize_messages(conv, tok)
  assert trained_texts(tok, ids, mask) == EXPECTED_TOOLS[name]
  text = tok.decode(ids.tolist())
  assert "Weather in a city" in text and "temp" in text  # the preamble and the results are there...
  trained = "".join(trained_texts(tok, ids, mask))
  for untrained in ("Weather in a city", "temp", "sunny\"", "Tools", "ipython", "tool_response", "Be brief"):
    assert untrained not in trained  # ...and never trained
  lay = chat.layout(conv, tok)
  assert lay.not_rendered == [] and lay.tool_calls and lay.reasoning  # Llama 3.1's JSON-escaped results count


def test_tool_records_on_templates_without_tools_are_dropped_with_a_reason(family_tok, chatml_tok, tok_dirs):
  conv = records.to_conversation({"messages": TOOL_CHAT, "tools": TOOLS}, "auto")
  for tok in (family_tok("gemma3"), chatml_tok):
    with pytest.raises(chat.DropExample) as e:
      chat.tokenize_messages(conv, tok)
    assert e.value.reason == "tools_unsupported"
  # A template that shows the tools but writes no tool calls: the calls would be lost.
  no_calls = ("{%- if tools %}{{- '<|im_start|>system\\n' + tools | tojson + '<|im_end|>\\n' }}{%- endif %}"
              "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') + '<|im_end|>\\n' }}"
              "{%- endfor %}")
  tok = _with_template(tok_dirs, "chatml", no_calls)
  for turns in (TOOL_CHAT[:5], TOOL_CHAT[5:8]):  # a call alone; text and a call
    with pytest.raises(chat.DropExample, match="does not render the tool calls") as e:
      chat.tokenize_messages(Conversation(TOOL_CHAT[:2] + turns, TOOLS), tok)
    assert e.value.reason == "tools_unsupported"
  # One that writes tool calls but never the tools list: the model would not see what it may call.
  no_tools = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') }}"
              "{%- for c in m.tool_calls or [] %}{{- '<tool_call>' + c.function.name + '</tool_call>' }}{%- endfor %}"
              "{{- '<|im_end|>\\n' }}{%- endfor %}")
  tok = _with_template(tok_dirs, "chatml", no_tools)
  with pytest.raises(chat.DropExample, match="tools list") as e:
    chat.tokenize_messages(conv, tok)
  assert e.value.reason == "tools_unsupported"
  ids, mask = chat.tokenize_messages(Conversation(conv.messages[:5]), tok)  # without a tools list: fine
  assert trained_texts(tok, ids, mask) == ["<tool_call>get_weather</tool_call><|im_end|>",
                                           "It is 21 and sunny.<|im_end|>"]


def test_mistral_tool_calls_located_by_deleting_the_turn(family_tok):
  # Mistral v0.3 refuses the chat with a tool-call turn replaced by a plain reply (roles must alternate): the
  # turn is found as what the chat without it lacks. Its system message needs merging (see below).
  tok = family_tok("mistral_v03")
  call = '[TOOL_CALLS] [{{"name": "get_weather", "arguments": {{"city": "{}"}}, "id": "call0000{}"}}]</s>'
  ids, mask = chat.tokenize_messages(Conversation(TOOL_CHAT, TOOLS), tok, system="merge_into_first_user")
  assert trained_texts(tok, ids, mask) == [call.format("Paris", 1), "It is 21 and sunny.</s>", call.format("Rome", 2),
                                           "<think>\nThe tool says 25.\n</think>\n\nIt is 25 in Rome.</s>"]
  trained = "".join(trained_texts(tok, ids, mask))
  assert "TOOL_RESULTS" in tok.decode(ids.tolist()) and "TOOL_RESULTS" not in trained and "AVAILABLE" not in trained


def test_turns_that_cannot_be_located_are_dropped_not_mistrained(tok_dirs):
  # A template that refuses both the placeholder reply in place of the call and the chat without it.
  picky = ("{%- if messages | length != 4 %}{{- raise_exception('four messages') }}{%- endif %}"
           "{%- for m in messages %}{%- if m.role == 'assistant' and loop.index0 == 1 and not m.tool_calls %}"
           "{{- raise_exception('a call first') }}{%- endif %}"
           "{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') }}"
           "{%- for c in m.tool_calls or [] %}{{- '<tool_call>' + c.function.name + '</tool_call>' }}{%- endfor %}"
           "{{- '<|im_end|>\\n' }}{%- endfor %}")
  conv = [{"role": U, "content": "Weather in Paris?"}] + TOOL_CHAT[2:5]
  with pytest.raises(chat.MaskMismatch, match="could not be located"):
    chat.tokenize_messages(conv, _with_template(tok_dirs, "chatml", picky))
  # Without the length rule the turn is found by deletion; its header (the generation prompt) is not trained.
  lenient = (picky.split("{%- endif %}", 1)[1]
             + "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
  tok = _with_template(tok_dirs, "chatml", lenient)
  ids, mask = chat.tokenize_messages(conv, tok)
  assert trained_texts(tok, ids, mask) == ["<tool_call>get_weather</tool_call><|im_end|>",
                                           "It is 21 and sunny.<|im_end|>"]


SYSTEM_CHATS = [{"messages": [{"role": S, "content": f"Answer in {w} words."},
                              {"role": U, "content": f"Question {i}?"}, {"role": A, "content": f"Answer {i}."}]}
                for i, w in enumerate(("few", "many", "three"))]


def test_dropped_system_messages_are_counted_and_warned_once(tmp_path, family_tok, caplog):
  src = SourceCfg(path=write_jsonl(tmp_path / "s.jsonl", SYSTEM_CHATS), format="messages")
  tok = family_tok("mistral_v03")
  with caplog.at_level("WARNING"):
    store, stats = load_examples([src], tok, seq_len=256)
  assert stats.examples == 3 and stats.messages_not_rendered == {"system": 3}
  assert caplog.text.count("does not render the content of some messages") == 1
  assert "merge_into_first_user" in caplog.text
  ids, mask = store.get(0)
  assert "Answer in few" not in tok.decode(ids.tolist())
  assert trained_texts(tok, ids, mask) == [" Answer 0.</s>"]  # the template writes " " + reply

  store, stats = load_examples([src], tok, seq_len=256, system="merge_into_first_user")
  assert stats.messages_not_rendered == {}
  ids, mask = store.get(0)
  assert tok.decode(ids.tolist()) == "<s>[INST] Answer in few words.\n\nQuestion 0?[/INST] Answer 0.</s>"
  assert trained_texts(tok, ids, mask) == [" Answer 0.</s>"]


def test_system_role_refused_or_merged(tmp_path, family_tok):
  src = SourceCfg(path=write_jsonl(tmp_path / "s.jsonl", SYSTEM_CHATS), format="messages")
  gemma2 = family_tok("gemma2")
  with pytest.raises(Exception, match="System role not supported"):
    load_examples([src], gemma2, seq_len=256)  # every record dropped: the error names the reason
  store, stats = load_examples([src], gemma2, seq_len=256, system="merge_into_first_user")
  ids, mask = store.get(1)
  assert gemma2.decode(ids.tolist()) == ("<bos><start_of_turn>user\nAnswer in many words.\n\nQuestion 1?<end_of_turn>\n"
                                         "<start_of_turn>model\nAnswer 1.<end_of_turn>\n")
  assert trained_texts(gemma2, ids, mask) == ["Answer 1.<end_of_turn>"] and stats.messages_not_rendered == {}
  # Gemma 3 merges the system message itself: nothing is lost, merging or not gives the same text.
  _, kept = load_examples([src], family_tok("gemma3"), seq_len=256)
  assert kept.messages_not_rendered == {} and kept.examples == 3


def test_stats_count_reasoning_and_tool_examples(tmp_path, family_tok):
  rows = [{"messages": REASONING}, {"messages": TOOL_CHAT, "tools": TOOLS}, SYSTEM_CHATS[0]]
  srcs = [SourceCfg(path=write_jsonl(tmp_path / name, r), format="auto")
          for name, r in (("m.jsonl", rows), ("s.jsonl", [TOOL_SHAREGPT]))]
  _, stats = load_examples(srcs, family_tok("qwen3"), seq_len=1024)
  assert (stats.examples, stats.examples_with_reasoning, stats.examples_with_tool_calls) == (4, 3, 2)
  _, dropped = load_examples(srcs, family_tok("qwen3"), seq_len=1024, reasoning="drop")
  assert dropped.examples_with_reasoning == 3  # counted in the data, whatever is trained


def test_template_tokens_are_single_tokens_after_loading(family_tok, tmp_path):
  mistral = family_tok("mistral_v03")
  mistral.save_pretrained(str(tmp_path / "saved"))
  reloaded = chat.load_tokenizer(str(tmp_path / "saved"))  # as export / a resumed run load it
  for t in ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]"):
    assert len(mistral.encode(t, add_special_tokens=False)) == 1, t
    assert reloaded.encode(t, add_special_tokens=False) == mistral.encode(t, add_special_tokens=False), t
  ids, _ = chat.tokenize_messages(SYSTEM_CHATS[0]["messages"][1:], mistral)
  assert (ids == mistral.convert_tokens_to_ids("[INST]")).sum() == 1
  assert (ids == mistral.convert_tokens_to_ids("[/INST]")).sum() == 1
  qwen3 = family_tok("qwen3")
  for t in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>"):
    assert len(qwen3.encode(t, add_special_tokens=False)) == 1, t
  assert len(qwen3.encode("<tools>", add_special_tokens=False)) > 1  # bracketed text, not a marker: left as text
  # The reasoning tags are text the model writes: decoding without special tokens keeps them.
  assert qwen3.decode(qwen3.encode("<think>\nx\n</think>", add_special_tokens=False), skip_special_tokens=True) == \
      "<think>\nx\n</think>"
  deepseek = family_tok("deepseek_r1")
  assert len(deepseek.encode("<\uff5cAssistant\uff5c>", add_special_tokens=False)) == 1
  assert deepseek.eos_token == EOS_DS


def test_special_literals_of_a_template():
  from jaxtune.data import templates
  tmpl = ("{# [INST] <|commented|> #}{{ bos_token }}{% for m in messages %}"
          "{{ '[INST] ' + m['content'] + '[/INST]' if m['role'] == 'user' else m['content'] + '<|eot|>' }}"
          "{% endfor %}<tools>[{'a': 1}] <function-name> <start_of_turn><\uff5cUser\uff5c>")
  assert templates.special_literals(tmpl) == ["[INST]", "[/INST]", "<|eot|>", "<start_of_turn>", "<\uff5cUser\uff5c>"]


def test_readme_example_records(family_tok):
  import os
  import re
  readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
  section = readme[readme.index("## Reasoning and tool-calling data"):]
  blocks = re.findall(r"```json\n(.*?)```", section, re.S)[:2]
  tok = family_tok("qwen3")
  got = []
  for block in blocks:
    ids, mask = chat.tokenize_messages(records.to_conversation(json.loads(block), "auto"), tok)
    got.append(trained_texts(tok, ids, mask))
  assert got == [["<think>\n17 * 3 = 51.\n</think>\n\n51<|im_end|>"],
                 [QWEN_CALL.format("Paris") + "<|im_end|>", "It is 21 degrees in Paris.<|im_end|>"]]


def test_encoded_unpacks_as_ids_and_mask(chatml_tok):
  enc = chat.encode_batch([REASONING[1:3]], chatml_tok)[0]
  ids, mask = enc
  assert ids is enc.ids and mask is enc.loss_mask and enc.reasoning and not enc.tool_calls and enc.not_rendered == ()


def test_reasoning_and_system_config_keys():
  from jaxtune.config import Config, ConfigError, default_config
  c = default_config()
  c.model.path, c.data.train = "m", ({"path": "t.jsonl"},)
  d = Config.from_dict(c).data
  assert (d.reasoning, d.system) == ("train", "keep")
  c.data.reasoning, c.data.system = "drop", "merge_into_first_user"
  d = Config.from_dict(c).data
  assert (d.reasoning, d.system) == ("drop", "merge_into_first_user")
  for key, bad in (("reasoning", "keep"), ("system", "drop")):
    c = default_config()
    c.model.path, c.data.train = "m", ({"path": "t.jsonl"},)
    c.data[key] = bad
    with pytest.raises(ConfigError, match=f"data.{key}"):
      Config.from_dict(c)


def test_pipeline_passes_reasoning_and_system_settings(tmp_path, family_tok):
  from jaxtune.config import DataCfg
  from jaxtune.data.pipeline import build_pipeline
  data = write_jsonl(tmp_path / "d.jsonl", SYSTEM_CHATS + [{"messages": REASONING}])
  build = lambda name, **kw: build_pipeline(DataCfg(train=(SourceCfg(path=data),), seq_len=256, **kw),
                                            family_tok(name), batch_size=2, seed=0).stats
  assert build("mistral_v03").messages_not_rendered == {"system": 4}
  assert build("mistral_v03", system="merge_into_first_user").messages_not_rendered == {}
  kept, dropped = build("qwen3"), build("qwen3", reasoning="drop")
  assert kept.examples_with_reasoning == dropped.examples_with_reasoning == 1
  assert kept.loss_tokens > dropped.loss_tokens


def test_only_a_reply_that_ends_the_chat_gets_the_inference_form(family_tok):
  # A chat that ends with a user turn: Qwen3 strips the reasoning of the last reply, as it would at inference.
  tok = family_tok("qwen3")
  ids, mask = chat.tokenize_messages(REASONING + [{"role": U, "content": "Thanks!"}], tok)
  assert trained_texts(tok, ids, mask) == ["It is 4.<|im_end|>", "It is 6.<|im_end|>"]


def test_empty_tool_calls_key_is_a_plain_reply(family_tok):
  tok = family_tok("llama31")
  conv = [{"role": U, "content": "Hi"}, {"role": A, "content": "Hello.", "tool_calls": None}]
  ids, mask = chat.tokenize_messages(conv, tok)
  assert trained_texts(tok, ids, mask) == ["Hello.<|eot_id|>"]
  conv[1]["tool_calls"] = []
  assert trained_texts(tok, *chat.tokenize_messages(conv, tok)) == ["Hello.<|eot_id|>"]
