"""Loss masks from chat templates: the trained tokens decode to exactly the replies."""

import numpy as np
import pytest

from jaxtune.data import chat, templates
from tests.helpers.tokenizers import make_tokenizer

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "  The capital of France is Paris.\n"},
    {"role": "user", "content": "Say: hello there"},
    {"role": "assistant", "content": "hello there"},  # also appears in the user turn
    {"role": "user", "content": "Thank you!"},
    {"role": "assistant", "content": "Merci beaucoup!"},
]
REPLIES = [m["content"] for m in CONV if m["role"] == "assistant"]
# How each template renders a reply: llama3 trims it, chatml keeps it verbatim.
EXPECTED = {
    "llama3": [r.strip() + "<|eot_id|>" for r in REPLIES],
    "chatml": [r + "<|im_end|>" for r in REPLIES],
}


def runs(mask):
  edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
  return list(zip(edges[0::2], edges[1::2]))


def trained_texts(tok, ids, mask):
  return [tok.decode(ids[a:b].tolist()) for a, b in runs(mask)]


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_mask_decodes_to_replies_plus_end_of_turn(name, request):
  tok = request.getfixturevalue(f"{name}_tok")
  ids, mask = chat.tokenize_messages(CONV, tok)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
  assert trained_texts(tok, ids, mask) == EXPECTED[name]
  # Nothing else is trained: the untrained tokens plus the trained ones give the whole rendering.
  assert tok.decode(ids[mask == 0].tolist()).count("hello there") == 1  # the user's copy only
  assert tok.decode(ids.tolist()) == tok.apply_chat_template(CONV, tokenize=False)


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_mask_modes(name, request):
  tok = request.getfixturevalue(f"{name}_tok")
  ids, last = chat.tokenize_messages(CONV, tok, mask="last_assistant")
  assert trained_texts(tok, ids, last) == EXPECTED[name][-1:]
  ids2, every = chat.tokenize_messages(CONV, tok, mask="none")
  np.testing.assert_array_equal(ids, ids2)
  assert every.all()
  with pytest.raises(ValueError):
    chat.tokenize_messages(CONV, tok, mask="bogus")


def test_chatml_newline_after_end_of_turn_is_not_trained(chatml_tok):
  ids, mask = chat.tokenize_messages(CONV[1:3], chatml_tok)
  assert chatml_tok.decode(ids[-1:].tolist()) == "\n" and mask[-1] == 0
  assert chatml_tok.decode(ids[mask == 1].tolist()) == CONV[2]["content"] + "<|im_end|>"


def test_no_assistant_reply_is_dropped(llama3_tok):
  with pytest.raises(chat.DropExample) as e:
    chat.tokenize_messages([{"role": "user", "content": "hi"}], llama3_tok)
  assert e.value.reason == "no_loss_tokens"


def _with_template(tok_dirs, name, template):
  tok = chat.load_tokenizer(tok_dirs[name])
  tok.chat_template = template
  return tok


def test_generation_tags_use_transformers_mask(tok_dirs):
  # The generation block covers the reply only (no <|im_end|>): proof that this mask is transformers'.
  tmpl = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
          "{%- if m['role'] == 'assistant' %}{% generation %}{{- m['content'] }}{% endgeneration %}"
          "{%- else %}{{- m['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}")
  tok = _with_template(tok_dirs, "chatml", tmpl)
  assert chat.has_generation_tags(tok.chat_template)
  ids, mask = chat.tokenize_messages(CONV, tok)
  assert trained_texts(tok, ids, mask) == REPLIES
  ids, mask = chat.tokenize_messages(CONV, tok, mask="last_assistant")
  assert trained_texts(tok, ids, mask) == REPLIES[-1:]


def test_template_that_changes_replies_is_a_mismatch(tok_dirs):
  upper = templates.CHATML.replace("message['content']", "message['content'] | upper")
  tok = _with_template(tok_dirs, "chatml", upper)
  with pytest.raises(chat.MaskMismatch):
    chat.tokenize_messages(CONV, tok)


def test_template_without_end_of_turn_is_a_mismatch(tok_dirs):
  bare = "{%- for m in messages %}{{- m['role'] + ': ' + m['content'] + '\\n' }}{%- endfor %}"
  tok = _with_template(tok_dirs, "chatml", bare)
  with pytest.raises(chat.MaskMismatch, match="end-of-turn"):
    chat.tokenize_messages(CONV, tok)


def test_template_errors_drop_the_example(tok_dirs):
  strict = "{%- for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}" \
           "{{- m['content'] + '<|im_end|>' }}{%- endfor %}"
  tok = _with_template(tok_dirs, "chatml", strict)
  with pytest.raises(chat.DropExample) as e:
    chat.tokenize_messages(CONV, tok)
  assert e.value.reason == "template_error"


def test_spans_to_mask_hand_aligned():
  text = "ab cd<E>fg"
  offsets = np.array([[0, 2], [2, 5], [5, 8], [8, 10]])  # "ab" " cd" "<E>" "fg"
  np.testing.assert_array_equal(chat.spans_to_mask(offsets, [(3, 8)], text), [0, 1, 1, 0])  # " cd" starts on a space
  np.testing.assert_array_equal(chat.spans_to_mask(offsets, [(0, 2), (8, 10)], text), [1, 0, 0, 1])
  with pytest.raises(chat.MaskMismatch, match="end"):
    chat.spans_to_mask(offsets, [(3, 7)], text)  # "<E>" crosses the span end
  with pytest.raises(chat.MaskMismatch, match="start"):
    chat.spans_to_mask(offsets, [(1, 2)], text)  # "ab" starts before on a letter


def test_load_tokenizer_template_resolution(tmp_path):
  path, _ = make_tokenizer(str(tmp_path), "llama3", chat_template="")
  with pytest.raises(ValueError, match="data.chat_template"):
    chat.load_tokenizer(path)
  tok = chat.load_tokenizer(path, "llama3")
  assert tok.chat_template == templates.LLAMA3 and tok.jaxtune_added_tokens == {}
  jinja = tmp_path / "t.jinja"
  jinja.write_text(templates.LLAMA3)
  assert chat.load_tokenizer(path, str(jinja)).chat_template == templates.LLAMA3


def test_template_special_tokens_found_in_the_text():
  assert chat.template_special_tokens(templates.CHATML) == ["<|im_start|>", "<|im_end|>"]
  assert chat.template_special_tokens(templates.LLAMA3) == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
  gemma = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
  assert chat.template_special_tokens(gemma) == ["<start_of_turn>", "<end_of_turn>"]


@pytest.mark.parametrize("as_file", [False, True], ids=["builtin", "jinja"])
def test_missing_template_tokens_are_added(tmp_path, as_file, caplog):
  path, base = make_tokenizer(str(tmp_path), "llama3", chat_template="")  # lacks chatml's tokens
  n = len(base)
  if as_file:
    (tmp_path / "chatml.jinja").write_text(templates.CHATML)
  name = str(tmp_path / "chatml.jinja") if as_file else "chatml"
  with caplog.at_level("WARNING"):
    tok = chat.load_tokenizer(path, name)
  assert tok.jaxtune_added_tokens == {"<|im_start|>": n, "<|im_end|>": n + 1} and len(tok) == n + 2
  assert "<|im_start|>=%d" % n in caplog.text and "<|im_end|>=%d" % (n + 1) in caplog.text
  assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|finetune_right_pad_id|>"  # pad kept
  assert tok.bos_token == "<|begin_of_text|>"  # chatml renders no bos: unchanged
  ids, mask = chat.tokenize_messages(CONV, tok)
  assert trained_texts(tok, ids, mask) == EXPECTED["chatml"]
  assert (ids == n).sum() == 7 and (ids == n + 1).sum() == 7  # one start / end per message, single tokens
  tok.save_pretrained(str(tmp_path / "saved"))
  again = chat.load_tokenizer(str(tmp_path / "saved"))
  assert len(again) == n + 2 and again.eos_token == "<|im_end|>" and again.chat_template == templates.CHATML
  np.testing.assert_array_equal(chat.tokenize_messages(CONV, again)[0], ids)


def test_added_tokens_set_bos_and_pad_when_unset(tmp_path):
  path, base = make_tokenizer(str(tmp_path), "chatml", chat_template="")  # no bos, lacks llama3's tokens
  tok = chat.load_tokenizer(path, "llama3")
  n = len(base)
  assert list(tok.jaxtune_added_tokens.items()) == [("<|begin_of_text|>", n), ("<|start_header_id|>", n + 1),
                                                    ("<|end_header_id|>", n + 2), ("<|eot_id|>", n + 3)]
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|eot_id|>", "<|endoftext|>")
  ids, mask = chat.tokenize_messages(CONV, tok)
  assert ids[0] == n and trained_texts(tok, ids, mask) == EXPECTED["llama3"]
  _, t = make_tokenizer(str(tmp_path / "np"), "chatml", chat_template="")
  t.pad_token = None
  assert chat.add_template_tokens(t, templates.LLAMA3) and t.pad_token == t.eos_token == "<|eot_id|>"


# Patterns of real templates, written here: a default system prompt when none is
# given, and earlier assistant turns rendered without their reasoning.
THINKING = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a bot.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- set c = m['content'] %}"
    "{%- if m['role'] == 'assistant' and not loop.last and '</think>' in c %}"
    "{%- set c = c.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}")


def test_template_rendering_earlier_turns_differently(tok_dirs):
  tok = _with_template(tok_dirs, "chatml", THINKING)
  conv = [{"role": "user", "content": "2 + 2?"},
          {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nIt is 4."},
          {"role": "user", "content": "3 + 3?"},
          {"role": "assistant", "content": "<think>\nagain\n</think>\n\nIt is 6."}]
  ids, mask = chat.tokenize_messages(conv, tok)
  assert trained_texts(tok, ids, mask) == ["It is 4.<|im_end|>", conv[3]["content"] + "<|im_end|>"]
  assert tok.decode(ids.tolist()).startswith("<|im_start|>system\nYou are a bot.<|im_end|>")


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_fast_encode_matches_tokenizer_call(name, request):
  tok = request.getfixturevalue(f"{name}_tok")
  texts = [tok.apply_chat_template(CONV, tokenize=False), "plain text, no specials", "<|eot_id|><|im_end|>x"]
  ref = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
  for (ids, offsets), want_ids, want_off in zip(chat.encode_texts(tok, texts), ref["input_ids"],
                                                 ref["offset_mapping"]):
    assert ids.tolist() == want_ids and offsets.tolist() == [list(o) for o in want_off]
