"""A byte-level tokenizer built locally, with the Llama 3 chat template.

One token per byte (a BPE with no merges over the GPT-2 byte alphabet), so it
covers any text; the chat roles and the header separator are single tokens to
keep sequences short. No download: everything is constructed in memory.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxtune.data import templates

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIALS = (BOS, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD)
# Frequent template pieces kept whole (not special: they decode as text).
WORDS = ("user", "assistant", "system", "\n\n")


def build_tokenizer() -> PreTrainedTokenizerFast:
  """A fresh byte-level tokenizer: ids 0-255 are bytes, then words, then specials."""
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  byte_chars = [chr(c) for c in _byte_order()]
  assert sorted(byte_chars) == sorted(alphabet)
  vocab = {ch: i for i, ch in enumerate(byte_chars)}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in WORDS])
  tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD,
      clean_up_tokenization_spaces=False, model_max_length=4096)
  fast.chat_template = templates.LLAMA3
  return fast


def _byte_order() -> list[int]:
  """Code points of the GPT-2 byte-to-unicode map, in byte order 0..255."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  out, extra = {}, 0
  for b in range(256):
    if b in printable:
      out[b] = b
    else:
      out[b] = 256 + extra
      extra += 1
  return [out[b] for b in range(256)]


def vocab_size(multiple: int = 64) -> int:
  """The tokenizer's size rounded up, for the model's embedding table."""
  n = 256 + len(WORDS) + len(SPECIALS)
  return -(-n // multiple) * multiple
