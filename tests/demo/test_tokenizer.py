"""The demo tokenizer: byte-level, llama3 specials and template, round-trips all task text."""

from jaxtune.data import templates
from jaxtune.data.chat import load_tokenizer, tokenize_messages
from jaxtune.demo import tasks
from jaxtune.demo.tokenizer import build_tokenizer, vocab_size


def test_specials_and_template():
  tok = build_tokenizer()
  assert tok.chat_template == templates.LLAMA3
  vocab = tok.get_vocab()
  for t in templates.SPECIAL_TOKENS["llama3"]:
    assert t in vocab
  assert tok.eos_token == "<|eot_id|>" and tok.bos_token == "<|begin_of_text|>"
  assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
  assert len(tok) <= vocab_size()


def test_round_trips_task_text_one_token_per_char():
  tok = build_tokenizer()
  train, heldout = tasks.make_splits(200, 50)
  for rec in train + heldout:
    for m in rec["messages"]:
      ids = tok(m["content"], add_special_tokens=False)["input_ids"]
      assert len(ids) == len(m["content"])
      assert tok.decode(ids) == m["content"]
  odd = "Grüße, 你好!\n\ttabs"
  assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd


def test_saved_tokenizer_masks_replies(tmp_path):
  build_tokenizer().save_pretrained(str(tmp_path))
  tok = load_tokenizer(str(tmp_path))
  rec = tasks.record("Reverse: abc", "cba")
  text = tok.apply_chat_template(rec["messages"], tokenize=False)
  assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nReverse: abc<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\ncba<|eot_id|>")
  ids, mask = tokenize_messages(rec["messages"], tok)
  assert tok.decode(ids) == text
  trained = [int(i) for i, m in zip(ids, mask) if m]
  assert tok.decode(trained) == "cba<|eot_id|>"
