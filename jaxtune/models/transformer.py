"""The decoder shared by every family, and the causal LM around it.

Attribute paths mirror HF: `model.embed_tokens`, `model.layers[i].self_attn`,
`model.layers[i].mlp`, `model.norm`, `lm_head` (None when tied).

With `scan_layers` the decoder blocks are one `DecoderLayer` whose every
variable has a leading `layers` axis (logical axis "layers"), and the forward
pass is a `lax.scan` over it (remat applied to the scanned block), so the
compiled program holds one block whatever the depth. Layers of different kinds
(Gemma 2/3's sliding and global layers, Qwen 2's sliding top layers) run in the
same scan: the kind of each layer is scanned data, and a `lax.switch` picks the
block variant (window, RoPE) per layer. The weight paths are then
`model.layers.self_attn...` with the layer as the first axis; HF load and export
stack and unstack them (jaxtune/weights/).
"""

from __future__ import annotations

import json
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.mesh import constrain
from jaxtune.models.attention import Attention, cache_write
from jaxtune.models.config import ModelConfig
from jaxtune.models.layers import MLP, Embed, Linear, RMSNorm

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACT = ("batch", "seq", None)


class DecoderLayer(nnx.Module):
  """Pre-norm block; with `sandwich_norm` (Gemma) the attention and MLP outputs
  are normed too, and the pre-MLP norm is `pre_feedforward_layernorm`."""

  def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs, dtype, param_dtype, attention_impl,
               quantize: str | None = None):
    nkw = dict(eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, param_dtype=param_dtype)
    self.self_attn = Attention(cfg, layer, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                               attention_impl=attention_impl, quantize=quantize)
    self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, bias=cfg.mlp_bias, rngs=rngs,
                   dtype=dtype, param_dtype=param_dtype, quantize=quantize)
    self.input_layernorm = RMSNorm(cfg.hidden_size, **nkw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **nkw)
    if cfg.sandwich_norm:
      self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, **nkw)
      self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, **nkw)
    else:
      self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None

  def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array, segment_ids_BT: jax.Array | None, *,
               sliding: bool | None = None) -> jax.Array:
    attn_BTD = self.self_attn(self.input_layernorm(x_BTD), positions_BT, segment_ids_BT, sliding=sliding)
    return self._residual(x_BTD, attn_BTD)

  def decode(self, x_BtD, positions_Bt, segment_ids_Bt, k_BKSH, v_BKSH, cache_seg_BS, cache_pos_BS, index, *,
             sliding: bool | None = None):
    """`__call__` for a block of tokens over a KV cache; returns (x, k, v)."""
    attn_BtD, k_BKSH, v_BKSH = self.self_attn.decode(self.input_layernorm(x_BtD), positions_Bt, segment_ids_Bt,
                                                     k_BKSH, v_BKSH, cache_seg_BS, cache_pos_BS, index,
                                                     sliding=sliding)
    return self._residual(x_BtD, attn_BtD), k_BKSH, v_BKSH

  def _residual(self, x_BTD: jax.Array, attn_BTD: jax.Array) -> jax.Array:
    if self.pre_feedforward_layernorm is None:
      h_BTD = x_BTD + attn_BTD
      return h_BTD + self.mlp(self.post_attention_layernorm(h_BTD))
    h_BTD = x_BTD + self.post_attention_layernorm(attn_BTD)
    return h_BTD + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h_BTD)))


def stacked_layers(cfg: ModelConfig, *, rngs: nnx.Rngs, **kw) -> DecoderLayer:
  """One DecoderLayer whose every variable has a leading axis of `num_layers` (logical axis "layers"), each
  slice initialised as an unstacked layer is (its own split of the rngs)."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return DecoderLayer(cfg, 0, rngs=rngs, **kw)

  layers = make(rngs)
  for _, var in nnx.iter_graph(layers):
    if isinstance(var, nnx.Variable) and var.get_metadata().get("logical_axes") is not None:
      var.set_metadata(logical_axes=("layers",) + tuple(var.get_metadata()["logical_axes"]))
  return layers


class Decoder(nnx.Module):
  """HF's `model`: embeddings, layers (a list, or one stacked layer when scanned), final norm."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention_impl,
               scan_layers: bool = False, quantize: str | None = None):
    self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl, quantize=quantize)
    if scan_layers:
      self.layers = stacked_layers(cfg, rngs=rngs, **kw)
    else:
      self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs, **kw) for i in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, plus_one=cfg.norm_plus_one, param_dtype=param_dtype)


def _run_layer(layer: DecoderLayer, remat: str, x_BTD, positions_BT, segment_ids_BT):
  if remat == "none":
    return layer(x_BTD, positions_BT, segment_ids_BT)
  graphdef, state = nnx.split(layer)

  def f(state, x_BTD, positions_BT, segment_ids_BT):
    return nnx.merge(graphdef, state)(x_BTD, positions_BT, segment_ids_BT)

  return jax.checkpoint(f, policy=REMAT_POLICIES[remat], prevent_cse=True)(state, x_BTD, positions_BT, segment_ids_BT)


def _switch(index: jax.Array, branches: list, *args):
  """branches[index](*args); the one branch itself when there is only one (no switch in the program)."""
  return branches[0](*args) if len(branches) == 1 else jax.lax.switch(index, branches, *args)


class CausalLM(nnx.Module):
  """Decoder-only LM: `__call__(input_ids [B,T], positions, segment_ids) -> float32 logits [B,T,V]`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = "none", attention_impl: str | None = None, hf_config: dict[str, Any] | None = None,
               scan_layers: bool = False, quantize: str | None = None):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"remat {remat!r} not in {tuple(REMAT_POLICIES)}")
    self.config = cfg
    self.dtype = dtype
    self.remat = remat
    self.scan_layers = bool(scan_layers)
    self.model = Decoder(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                         scan_layers=self.scan_layers, quantize=quantize)
    self.lm_head = None if cfg.tie_word_embeddings else Linear(
        cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self._hf_config_json = None  # JSON text, so that the graph definition stays hashable
    self.hf_config = hf_config

  @property
  def hf_config(self) -> dict[str, Any] | None:
    """The source config.json (as loaded), or None for a model built from scratch."""
    return None if self._hf_config_json is None else json.loads(self._hf_config_json)

  @hf_config.setter
  def hf_config(self, value: dict[str, Any] | None) -> None:
    self._hf_config_json = None if value is None else json.dumps(value, sort_keys=True)

  def _embed(self, input_ids: jax.Array) -> jax.Array:
    x_BTD = self.model.embed_tokens(input_ids)
    if self.config.scale_embeddings:
      x_BTD = x_BTD * jnp.asarray(math.sqrt(self.config.hidden_size), self.dtype)
    return x_BTD

  def hidden_states(self, input_ids: jax.Array, positions: jax.Array | None = None,
                    segment_ids: jax.Array | None = None) -> jax.Array:
    """Final-normed hidden states [B, T, D] in the compute dtype."""
    B, T = input_ids.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)) if positions is None else positions
    x_BTD = constrain(self._embed(input_ids), ACT)
    if self.scan_layers:
      x_BTD = self._scanned_layers(x_BTD, positions_BT, segment_ids)
    else:
      for layer in self.model.layers:
        x_BTD = constrain(_run_layer(layer, self.remat, x_BTD, positions_BT, segment_ids), ACT)
    return constrain(self.model.norm(x_BTD), ACT)

  def _layer_kinds(self) -> tuple[tuple[bool, ...], jax.Array]:
    """(the distinct layer kinds, sliding or not, in order; each layer's index into them [L])."""
    flags = [self.config.is_sliding(i) for i in range(self.config.num_layers)]
    kinds = tuple(sorted(set(flags)))
    return kinds, jnp.asarray([kinds.index(f) for f in flags], jnp.int32)

  def _scanned_layers(self, x_BTD, positions_BT, segment_ids_BT):
    """The stacked decoder blocks over x, one `lax.scan` step per layer (remat per step)."""
    graphdef, state = nnx.split(self.model.layers)
    kinds, kind_L = self._layer_kinds()

    def block(state_l, x_BTD, kind):
      layer = nnx.merge(graphdef, state_l)
      branches = [lambda x, k=k: layer(x, positions_BT, segment_ids_BT, sliding=k) for k in kinds]
      return _switch(kind, branches, x_BTD)

    if self.remat != "none":
      block = jax.checkpoint(block, policy=REMAT_POLICIES[self.remat])

    def step(x_BTD, xs):
      state_l, kind = xs
      return constrain(block(state_l, x_BTD, kind), ACT), None

    x_BTD, _ = jax.lax.scan(step, x_BTD, (state, kind_L))
    return x_BTD

  def logits_from_hidden(self, h_BTD: jax.Array) -> jax.Array:
    """float32 logits [B, T, V] (final softcap applied) from `hidden_states`."""
    if self.lm_head is None:
      logits_BTV = self.model.embed_tokens.attend(h_BTD)
    else:
      logits_BTV = jnp.einsum("btd,dv->btv", h_BTD.astype(self.dtype), self.lm_head.kernel[...].astype(self.dtype),
                              preferred_element_type=jnp.float32)
    cap = self.config.final_logit_softcap
    if cap is not None:
      logits_BTV = jnp.tanh(logits_BTV / cap) * cap
    return logits_BTV

  def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    return self.logits_from_hidden(self.hidden_states(input_ids, positions, segment_ids))

  # -- KV-cache decoding -----------------------------------------------------
  CACHE_AXES = ("batch", "kv_heads", "seq", "head_dim")  # logical axes of the k/v caches [B, K, S, H]
  CACHE_SLOT_AXES = ("batch", "seq")  # ... and of the per-slot segment ids / positions [B, S]
  STACKED_CACHE_AXES = ("layers",) + CACHE_AXES  # scanned layers' stacked caches [L, B, K, S, H]

  def cache_len(self, layer: int, max_len: int) -> int:
    """Slots of `layer`'s cache for columns 0..max_len-1: its window when that is shorter (a ring), else max_len."""
    w = self.config.window(layer)
    return w if w is not None and w < max_len else max_len

  def init_cache(self, batch: int, max_len: int, dtype=None) -> dict[str, Any]:
    """An empty KV cache for columns 0..max_len-1: per layer k/v [B, K, S, H] and per-slot segment ids
    (0 = empty) and positions.

    Full-attention layers hold every column (S = max_len; slot metadata "segment_ids" / "positions" [B, max_len]).
    Sliding layers whose window W is shorter keep only a ring of W slots, column c in slot c % W (metadata
    "ring_segment_ids" / "ring_positions" [B, W], present only then). Under a mesh context the arrays are
    sharded by their logical axes (CACHE_AXES, CACHE_SLOT_AXES).

    With `scan_layers` the layers' caches are stacked by length: "k" / "v" [L_full, B, K, max_len, H] for the
    layers holding every column, "ring_k" / "ring_v" [L_ring, B, K, W, H] for the rings (each present when it
    has a layer; STACKED_CACHE_AXES)."""
    cfg = self.config
    dtype = self.dtype if dtype is None else dtype
    lens = [self.cache_len(i, max_len) for i in range(cfg.num_layers)]
    H = cfg.head_dim
    kv = lambda S: constrain(jnp.zeros((batch, cfg.num_kv_heads, S, H), dtype), self.CACHE_AXES)  # noqa: E731
    slots = lambda S: constrain(jnp.zeros((batch, S), jnp.int32), self.CACHE_SLOT_AXES)  # noqa: E731
    cache = {"segment_ids": slots(max_len), "positions": slots(max_len)}
    if self.scan_layers:
      for pre, layers in self._cache_groups(max_len).items():
        S = max_len if pre == "" else lens[layers[0]]
        shape = (len(layers), batch, cfg.num_kv_heads, S, H)
        cache[pre + "k"] = constrain(jnp.zeros(shape, dtype), self.STACKED_CACHE_AXES)
        cache[pre + "v"] = constrain(jnp.zeros(shape, dtype), self.STACKED_CACHE_AXES)
    else:
      cache.update(k=[kv(S) for S in lens], v=[kv(S) for S in lens])
    rings = {S for S in lens if S < max_len}  # one window for every sliding layer
    if rings:
      (W,) = rings
      cache.update(ring_segment_ids=slots(W), ring_positions=slots(W))
    return cache

  def _cache_groups(self, max_len: int) -> dict[str, list[int]]:
    """The layers of each stacked cache: "" (every column) and "ring_" (a sliding window's ring), when not
    empty."""
    groups: dict[str, list[int]] = {}
    for i in range(self.config.num_layers):
      groups.setdefault("ring_" if self.cache_len(i, max_len) < max_len else "", []).append(i)
    return groups

  def _scanned_decode(self, x_BtD, pos_Bt, seg_Bt, cache, index):
    """The stacked layers over a block of tokens and their stacked caches, one `lax.scan` step per layer;
    returns (x, {pre: (k, v)})."""
    S = cache["positions"].shape[1]
    groups = self._cache_groups(S)
    slot_L = [0] * self.config.num_layers
    for layers in groups.values():
      for j, i in enumerate(layers):
        slot_L[i] = j
    flags = [(self.config.is_sliding(i), self.cache_len(i, S) < S) for i in range(self.config.num_layers)]
    variants = tuple(sorted(set(flags)))
    graphdef, state = nnx.split(self.model.layers)

    def step(carry, xs):
      x_BtD, kv = carry
      state_l, variant, slot = xs
      layer = nnx.merge(graphdef, state_l)

      def run(x_BtD, kv, sliding, pre):
        k_all, v_all = kv[pre]
        k_BKSH = jax.lax.dynamic_index_in_dim(k_all, slot, 0, keepdims=False)
        v_BKSH = jax.lax.dynamic_index_in_dim(v_all, slot, 0, keepdims=False)
        x_BtD, k_BKSH, v_BKSH = layer.decode(x_BtD, pos_Bt, seg_Bt, k_BKSH, v_BKSH, cache[pre + "segment_ids"],
                                             cache[pre + "positions"], index, sliding=sliding)
        kv = {**kv, pre: (jax.lax.dynamic_update_index_in_dim(k_all, k_BKSH, slot, 0),
                          jax.lax.dynamic_update_index_in_dim(v_all, v_BKSH, slot, 0))}
        return x_BtD, kv

      branches = [lambda x, kv, sl=sl, ring=ring: run(x, kv, sl, "ring_" if ring else "") for sl, ring in variants]
      x_BtD, kv = _switch(variant, branches, x_BtD, kv)
      return (constrain(x_BtD, ACT), kv), None

    kv = {pre: (cache[pre + "k"], cache[pre + "v"]) for pre in groups}
    xs = (state, jnp.asarray([variants.index(f) for f in flags], jnp.int32), jnp.asarray(slot_L, jnp.int32))
    (x_BtD, kv), _ = jax.lax.scan(step, (x_BtD, kv), xs)
    return x_BtD, kv

  def decode_hidden(self, input_ids: jax.Array, positions: jax.Array, cache: dict[str, Any], cache_index: jax.Array,
                    segment_ids: jax.Array | None = None):
    """Final-normed hidden states [B, t, D] of a block of t tokens written into `cache` at columns
    cache_index..cache_index+t-1 (below the cache's max_len; a sliding layer's ring takes any column), and
    the new cache. Tokens attend to same-segment slots at earlier or equal positions (within the window on
    sliding layers); segment_ids default to 1, and 0 marks padding that nothing else attends to."""
    B, t = input_ids.shape
    S = cache["positions"].shape[1]
    seg_Bt = jnp.ones((B, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    pos_Bt = positions.astype(jnp.int32)
    index = jnp.asarray(cache_index, jnp.int32)
    x_BtD = constrain(self._embed(input_ids), ACT)
    if self.scan_layers:
      x_BtD, kv = self._scanned_decode(x_BtD, pos_Bt, seg_Bt, cache, index)
      new_cache = {}
      for pre, (k, v) in kv.items():
        new_cache[pre + "k"] = constrain(k, self.STACKED_CACHE_AXES)
        new_cache[pre + "v"] = constrain(v, self.STACKED_CACHE_AXES)
    else:
      ks, vs = [], []
      for i, (layer, k_BKSH, v_BKSH) in enumerate(zip(self.model.layers, cache["k"], cache["v"])):
        pre = "ring_" if self.cache_len(i, S) < S else ""
        x_BtD, k_BKSH, v_BKSH = layer.decode(x_BtD, pos_Bt, seg_Bt, k_BKSH, v_BKSH, cache[pre + "segment_ids"],
                                             cache[pre + "positions"], index)
        x_BtD = constrain(x_BtD, ACT)
        ks.append(constrain(k_BKSH, self.CACHE_AXES))
        vs.append(constrain(v_BKSH, self.CACHE_AXES))
      new_cache = {"k": ks, "v": vs}
    for pre in ("", "ring_"):
      for name, block_Bt in (("segment_ids", seg_Bt), ("positions", pos_Bt)):
        if pre + name in cache:
          new = cache_write(cache[pre + name], block_Bt, index, ring=pre == "ring_")
          new_cache[pre + name] = constrain(new, self.CACHE_SLOT_AXES)
    return self.model.norm(x_BtD), new_cache

  def decode(self, input_ids: jax.Array, positions: jax.Array, cache: dict[str, Any], cache_index: jax.Array,
             segment_ids: jax.Array | None = None):
    """float32 logits [B, t, V] of a block written into the KV cache (prefill: a prompt; decode: one token),
    and the new cache. See `decode_hidden`."""
    h_BtD, new_cache = self.decode_hidden(input_ids, positions, cache, cache_index, segment_ids)
    return self.logits_from_hidden(h_BtD), new_cache


def build_model(cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                attention_impl: str | None = None, hf_config: dict[str, Any] | None = None,
                scan_layers: bool = False, quantize: str | None = None) -> CausalLM:
  """A randomly initialised CausalLM (normal(0.02) kernels/embeddings, zero biases, unit norms); with
  `quantize` the decoder blocks' projections are stored quantized (QLoRA's frozen base; lm_head and the
  embeddings are not)."""
  return CausalLM(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype, remat=remat, attention_impl=attention_impl,
                  hf_config=hf_config, scan_layers=scan_layers, quantize=quantize)
