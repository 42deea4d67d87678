"""jaxtune: instruction tuning of open-weight LLMs in JAX/Flax NNX."""

__version__ = "0.1.0"


def load_pretrained(path, *, dtype=None, mesh=None, param_dtype=None):
  """Loads an HF checkpoint dir (or hub id) as a Flax NNX causal LM."""
  from jaxtune.weights.hf_load import load_pretrained as _load
  return _load(path, dtype=dtype, mesh=mesh, param_dtype=param_dtype)


def save_pretrained(model, out_dir, *, tokenizer=None, dtype=None):
  """Writes a model as an HF checkpoint dir that transformers loads."""
  from jaxtune.weights.hf_export import save_pretrained as _save
  return _save(model, out_dir, tokenizer=tokenizer, dtype=dtype)


__all__ = ["load_pretrained", "save_pretrained", "__version__"]
