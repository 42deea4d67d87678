"""jaxtune: instruction tuning of open-weight LLMs in JAX/Flax NNX."""

__version__ = "0.1.0"


def load_pretrained(path, *, dtype=None, mesh=None, param_dtype=None, scan_layers=None):
  """Loads an HF checkpoint dir (or hub id) as a Flax NNX causal LM (decoder blocks stacked and scanned with
  `scan_layers=True`; unrolled by default)."""
  from jaxtune.weights.hf_load import load_pretrained as _load
  return _load(path, dtype=dtype, mesh=mesh, param_dtype=param_dtype, scan_layers=scan_layers)


def save_pretrained(model, out_dir, *, tokenizer=None, dtype=None):
  """Writes a model as an HF checkpoint dir that transformers loads."""
  from jaxtune.weights.hf_export import save_pretrained as _save
  return _save(model, out_dir, tokenizer=tokenizer, dtype=dtype)


__all__ = ["load_pretrained", "save_pretrained", "__version__"]
