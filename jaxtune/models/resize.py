"""Growing a model's vocabulary for tokens added to its tokenizer.

`resize_vocab(model, n)` appends rows to the token embedding (and to the untied
`lm_head`), each new row the mean of the existing rows (computed in float32),
so a new token starts as an "average" token: the logits of the old tokens do not
change, and every new token's logit is the mean of the old logits (tied or
untied alike, before any final softcap). The new arrays keep the parameters'
logical axes and are placed by the same rules table as at load time; the model's
`config` and `hf_config["vocab_size"]` are updated so that export writes the new
size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from jaxtune.errors import CheckpointError
from jaxtune.mesh import sharding_for, variable_axes


def _round_up(n: int, multiple: int | None) -> int:
  return n if not multiple else -(-n // multiple) * multiple


def _grow(var: nnx.Variable, new_vocab: int) -> None:
  """Appends mean rows along the variable's "vocab" axis, in place."""
  old = var.get_value()
  axes = variable_axes(var)
  if not axes or "vocab" not in axes:
    raise ValueError(f"parameter of shape {old.shape} has no 'vocab' logical axis (axes {axes})")
  axis = axes.index("vocab")
  shape = list(old.shape)
  extra = new_vocab - shape[axis]
  shape[axis] = new_vocab
  sharding = old.sharding
  if isinstance(sharding, NamedSharding):
    sharding = sharding_for(axes, shape, sharding.mesh)

  def grow(x):
    mean = jnp.mean(x.astype(jnp.float32), axis=axis, keepdims=True).astype(x.dtype)
    rows = jnp.broadcast_to(mean, tuple(extra if d == axis else n for d, n in enumerate(x.shape)))
    return jnp.concatenate([x, rows], axis=axis)

  var.set_value(jax.jit(grow, out_shardings=sharding)(old))


def resize_vocab(model, new_vocab_size: int, *, pad_to_multiple_of: int | None = None) -> int:
  """Grows `model`'s vocabulary to `new_vocab_size` (rounded up to a multiple of
  `pad_to_multiple_of` when given) in place; returns the new size.

  A size at or below the current one changes nothing. Call before adding LoRA
  adapters and before building the optimizer state.
  """
  cfg = model.config
  new = _round_up(int(new_vocab_size), pad_to_multiple_of)
  if new <= cfg.vocab_size:
    return cfg.vocab_size
  head = getattr(model, "lm_head", None)
  if head is not None and getattr(head, "lora_a", None) is not None:
    raise ValueError("resize_vocab: lm_head carries LoRA adapters; resize before adding them")
  _grow(model.model.embed_tokens.embedding, new)
  if head is not None:
    _grow(head.kernel, new)
  model.config = dataclasses.replace(cfg, vocab_size=new)
  hf = model.hf_config
  if hf is not None:
    model.hf_config = {**hf, "vocab_size": new}
  return new


VOCAB_MULTIPLE = 128  # a grown vocabulary is padded to this (shards evenly over tensor axes)


def check_tokenizer_fits(tokenizer, vocab_size: int) -> None:
  """A tokenizer larger than the model's vocabulary by itself (before jaxtune added a template's tokens)
  is a CheckpointError with the two sizes: its extra ids have no embedding rows, and growing the model
  would hide a mismatched tokenizer."""
  own = len(tokenizer) - len(getattr(tokenizer, "jaxtune_added_tokens", None) or {})
  if own > vocab_size:
    raise CheckpointError(f"the tokenizer has {own} tokens but the model's vocabulary has {vocab_size} (vocab_size "
                          "in config.json): ids past the vocabulary have no embedding. Use the tokenizer that came "
                          "with the model (data.chat_template adds a template's own tokens and grows the model)")


def grow_for_tokenizer(model, tokenizer) -> int | None:
  """Grows `model`'s vocabulary to cover `len(tokenizer)` (special tokens a chat template added), padded
  to VOCAB_MULTIPLE; returns the old size when it grew, else None (`check_tokenizer_fits` first)."""
  old = model.config.vocab_size
  check_tokenizer_fits(tokenizer, old)
  if len(tokenizer) <= old:
    return None
  resize_vocab(model, len(tokenizer), pad_to_multiple_of=VOCAB_MULTIPLE)
  return old
