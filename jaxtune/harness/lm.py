"""jaxtune's model behind lm-evaluation-harness's `LM` interface.

`JaxtuneLM` answers lm-eval's three request types on jaxtune's own forward pass and
KV-cache decoding, with text handled exactly as lm-eval's Hugging Face backend
(`lm_eval.models.huggingface.HFLM`) handles it, so that the same checkpoint scores the
same under both:

  loglikelihood          lm-eval's TemplateLM splits (context, continuation) into tokens
                         (trailing context spaces move to the continuation; an empty
                         context becomes the prefix token); `continuation_scores` scores them
  loglikelihood_rolling  the string's tokens cut into lm-eval's rolling windows of
                         max_length, each scored, summed per string
  generate_until         contexts encoded as the HF backend encodes them, left-truncated to
                         max_length - max_gen_toks, decoded greedily (or sampled when the task
                         asks) until an eos id the checkpoint declares; the text is then cut at
                         the first stop string, as the HF backend cuts it

Every process of a multi-host run answers every request (the model is sharded over all of
them; lm-eval sees one rank), so each process holds the same results; process 0 writes.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any, Sequence

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                  postprocess_generated_text, resolve_max_length)

from jaxtune import log as log_lib
from jaxtune.generate import generate_ids, pad_id_for
from jaxtune.harness.scoring import continuation_scores

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # as lm-eval's HF backend, for a checkpoint that declares no context length
DEFAULT_MAX_GEN_TOKS = 256  # as lm-eval's HF backend


class JaxtuneLM(TemplateLM):
  """An lm-eval LM over a jaxtune model (`jaxtune.generate.load_model` gives model, tokenizer, stop ids).

  `hf_config` (the checkpoint's config.json as a dict) gives the context length as lm-eval reads it
  (`n_positions`, `max_position_embeddings`, `n_ctx`, else the tokenizer's, else 2048); `max_length`
  overrides it. `batch_size` rows go through the model at once (rounded up to a multiple of the mesh's
  batch shards). `stop_ids` are the eos ids the checkpoint declares: where decoding of a row ends.
  """

  def __init__(self, model, tokenizer, stop_ids: Sequence[int], *, hf_config: dict[str, Any] | None = None,
               batch_size: int = 16, max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
               seed: int = 0, name: str = "jaxtune"):
    super().__init__()
    self.model, self.tokenizer, self.name = model, tokenizer, name
    self.stop_ids = list(stop_ids)
    self.batch_size = batch_size
    self.max_gen_toks, self.seed = max_gen_toks, seed
    self._max_length = max_length or resolve_max_length(SimpleNamespace(**(hf_config or {})), tokenizer,
                                                        default=DEFAULT_MAX_LENGTH)
    self.add_bos_token = None  # the tokenizer's own default, as the HF backend's

  # -- what lm-eval reads ------------------------------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    """The conditioning token of an empty context: BOS, else EOS (as the HF backend)."""
    bos = self.tokenizer.bos_token_id
    return bos if bos is not None else self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return str(self.tokenizer.name_or_path).replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                 **kwargs) -> list[int]:
    """Token ids as the HF backend makes them: the tokenizer's special tokens unless told otherwise, none
    when the string already starts with the prefix token's text."""
    kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
      kw["add_special_tokens"] = False
    ids = self.tokenizer.encode(string, **kw)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                              continue_final_message=not add_generation_prompt)

  # -- the three request types -------------------------------------------------------------------------------

  def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
    return super().loglikelihood(requests, disable_tqdm=True)  # our own progress bar, not lm-eval's

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, desc: str = "loglikelihood",
                            **kwargs) -> list[tuple[float, bool]]:
    """[((context, continuation) strings or None, context ids, continuation ids)] -> (logp, is_greedy)."""
    out = continuation_scores(self.model, [(ctx, cont) for _, ctx, cont in requests], max_length=self.max_length,
                              batch_size=self.batch_size, pad_id=pad_id_for(self.tokenizer, self.stop_ids), desc=desc)
    for (strings, _, _), answer in zip(requests, out):
      if strings is not None:
        self.cache_hook.add_partial("loglikelihood", strings, answer)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
    windows, owner = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for w in lm_utils.get_rolling_token_windows(token_list=self.tok_encode(string),
                                                  prefix_token=self.prefix_token_id,
                                                  max_seq_len=self.max_length, context_len=1):
        windows.append((None,) + lm_utils.make_disjoint_window(w))
        owner.append(i)
    scores = self._loglikelihood_tokens(windows, desc="loglikelihood_rolling")
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owner, scores):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
    groups: dict[str, list[int]] = {}  # requests with the same generation settings decode together
    for i, req in enumerate(requests):
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    out: list[str | None] = [None] * len(requests)
    bar = log_lib.progress(total=len(requests), desc="generate_until", unit="req")
    for idx in groups.values():
      contexts = [requests[i].args[0] for i in idx]
      for i, text in zip(idx, self._generate(contexts, requests[idx[0]].args[1])):
        out[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
      bar.update(len(idx))
    bar.close()
    return out

  def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
    kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
    until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode(self.eot_token_id,
                                                                                 skip_special_tokens=False))
    max_gen_toks = kwargs.pop("max_gen_toks")
    if max_gen_toks >= self.max_length:
      raise ValueError(f"the task asks for {max_gen_toks} new tokens; the model's context is {self.max_length}")
    prompts = [self.tok_encode(c, left_truncate_len=self.max_length - max_gen_toks) for c in contexts]
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    sample = bool(kwargs.get("do_sample")) and temperature > 0  # else greedy, as the HF backend
    pad = pad_id_for(self.tokenizer, self.stop_ids)
    outs = generate_ids(self.model, prompts, max_gen_toks, self._stop_ids(until), pad, batch_size=self.batch_size,
                        temperature=temperature if sample else 0.0,
                        top_p=float(kwargs.get("top_p", 1.0) or 1.0) if sample else 1.0,
                        top_k=int(kwargs.get("top_k", 0) or 0) if sample else 0, seed=self.seed)
    return [postprocess_generated_text(self.tok_decode(o), until, None) for o in outs]

  def _stop_ids(self, until: Sequence[str]) -> list[int]:
    """The declared eos ids, and every stop string that is one ordinary token: a row that produced it has
    reached its cut, so decoding it further changes nothing. (A special token is not: the decoded text
    skips it, so it cuts nothing; nor is a string inside another stop string, which may start earlier.)"""
    ids = set(self.stop_ids)
    special = set(self.tokenizer.all_special_ids)
    for s in until:
      if not s or any(s in t for t in until if t != s):  # another stop string holding s may cut earlier
        continue
      enc = self.tokenizer.encode(s, add_special_tokens=False)
      if len(enc) == 1 and enc[0] not in special and self.tokenizer.decode(enc) == s:
        ids.add(enc[0])
    return sorted(ids)
