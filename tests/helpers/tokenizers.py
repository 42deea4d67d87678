"""Tiny byte-level BPE tokenizers built locally, with a chat template, for tests.

`make_tokenizer` trains a BPE of at most `vocab` entries on a fixed text, adds the
special tokens of a built-in template (`jaxtune.data.templates`), sets that
template, and saves the result with `save_pretrained` so `AutoTokenizer` loads it.
Byte-level, so any text round-trips; deterministic, so ids are stable across runs.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from jaxtune.data import templates

# Special tokens per template, with the roles they play.
SPECIALS = {
    "llama3": {
        "tokens": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"],
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
    },
    "chatml": {
        "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
    },
    # Base sets of families whose turn markers come from a .jinja template (added by chat.load_tokenizer).
    "mistral": {"tokens": ["<unk>", "<s>", "</s>"], "bos_token": "<s>", "eos_token": "</s>", "pad_token": None},
    "gemma": {"tokens": ["<pad>", "<eos>", "<bos>"], "bos_token": "<bos>", "eos_token": "<eos>",
              "pad_token": "<pad>"},
    "deepseek": {"tokens": ["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"],
                 "bos_token": "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                 "eos_token": "<\uff5cend\u2581of\u2581sentence\uff5c>", "pad_token": None},
}

_CORPUS = """\
You are a helpful assistant. Answer the question briefly and politely.
What is the capital of France? The capital of France is Paris.
Translate to French: good morning. Bonjour. Thank you, merci beaucoup!
Write a haiku about the sea. Waves fold into foam, the tide keeps its slow promise.
How many legs does a spider have? A spider has eight legs.
Summarize: the quick brown fox jumps over the lazy dog. A fox jumps over a dog.
Compute 12 + 30. The answer is 42. Sort these numbers: 3 1 2 -> 1 2 3.
system user assistant tool human gpt instruction input output prompt completion
Hello! Hi there, how can I help you today? Please explain it step by step.
"""


def make_tokenizer(tmp_dir: str, template: str = "llama3", vocab: int = 320,
                   chat_template: str | None = None):
  """Builds and saves a tiny tokenizer; returns (path, tokenizer).

  `template` names the special-token set (a key of SPECIALS); the chat
  template set on it is `chat_template` if given (None: the built-in of that
  name, none for sets without one; "": none at all).
  """
  spec = SPECIALS[template]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab, special_tokens=spec["tokens"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
  if template == "llama3":
    tok.model.ignore_merges = True  # as in Llama 3's tokenizer.json (old tokenizers gave wrong offsets)
  assert tok.get_vocab_size() <= max(vocab, 256 + len(spec["tokens"]))
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=spec["bos_token"], eos_token=spec["eos_token"],
      pad_token=spec["pad_token"], clean_up_tokenization_spaces=False)
  fast.chat_template = templates.BUILTIN.get(template) if chat_template is None else (chat_template or None)
  path = os.path.join(str(tmp_dir), f"tok_{template}")
  fast.save_pretrained(path)
  return path, fast
