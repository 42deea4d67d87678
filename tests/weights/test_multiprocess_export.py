"""Two `jax.distributed` processes load a checkpoint onto one (1, 8, 1) mesh and export it collectively.

Each process has 4 CPU devices; the parameters are spread over both processes
(no process holds a whole sharded tensor), so the export has to all-gather. The
parent checks that transformers reloads the export with the source model's
logits, and that exactly one set of files was written: each process is given its
own directory (standing in for a host's local disk); only process 0's may hold
files, and they are byte-identical to a one-process export on 8 devices.

This file is also the worker: `python tests/weights/test_multiprocess_export.py ID PORT SRC ROOT`.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_SHARD_BYTES = 30_000  # several files for the tiny model: exercises the index as well


def export_dir(root: Path, process_id: int) -> Path:
  return Path(root) / f"host{process_id}" / "export"


def worker(process_id: int, port: int, src: str, root: str) -> None:
  import jax
  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  from flax import nnx

  from jaxtune import mesh as mesh_lib
  from jaxtune.weights import load_pretrained, save_pretrained

  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
  mesh = mesh_lib.make_mesh(1, 8, 1)
  model = load_pretrained(src, mesh=mesh)
  flat = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  facts = {
      "process": jax.process_index(),
      "mesh": dict(mesh.shape),
      "split_over_processes": sorted(k for k, x in flat.items() if not x.is_fully_addressable
                                     and not x.sharding.is_fully_replicated),
      "embed_spec": [a if a is None or isinstance(a, str) else list(a)
                     for a in flat["model.embed_tokens.embedding"].sharding.spec],
      "embed_local_shards": sorted({s.data.shape for s in flat["model.embed_tokens.embedding"].addressable_shards}),
  }
  out = save_pretrained(model, export_dir(Path(root), process_id), source_dir=src, max_shard_bytes=MAX_SHARD_BYTES)
  facts["returned"] = str(out)
  print("FACTS " + json.dumps(facts), flush=True)


def test_two_process_load_and_collective_export(tmp_path):
  import jax
  import numpy as np
  import transformers
  from flax import nnx

  from jaxtune import mesh as mesh_lib
  from jaxtune.weights import load_pretrained, save_pretrained
  from tests.helpers.hf_models import hf_logits, make_tiny_hf, rel_err

  src, hf = make_tiny_hf(tmp_path / "src", "llama", tie=False)
  root = tmp_path / "hosts"
  from tests.helpers.cli import free_port
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TOKENIZERS_PARALLELISM="false")
  procs = [subprocess.Popen([sys.executable, __file__, str(i), str(port), str(src), str(root)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)
  facts = [json.loads(next(ln for ln in o.splitlines() if ln.startswith("FACTS "))[6:]) for o in outs]

  # the load really was one global mesh spread over both processes
  for i, f in enumerate(facts):
    assert f["process"] == i and f["mesh"] == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
    assert f["embed_spec"] == [None, "fsdp"] and f["embed_local_shards"] == [[160, 8]]
    assert "lm_head.kernel" in f["split_over_processes"] and "model.layers.1.mlp.down_proj.kernel" in \
        f["split_over_processes"]
    assert f["returned"] == str(export_dir(root, i))

  # one set of files: process 0 wrote a complete checkpoint, process 1 wrote nothing
  out = export_dir(root, 0)
  assert not (root / "host1").exists(), sorted(str(p) for p in (root / "host1").rglob("*"))
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 1 and all(s.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["config.json", "generation_config.json", "model.safetensors.index.json"] + shards)

  # byte-identical to what one process with the same 8 devices writes for the same model
  one = load_pretrained(src, mesh=mesh_lib.make_mesh(1, 8, 1, devices=jax.devices()[:8]))
  single = save_pretrained(one, tmp_path / "single", source_dir=src, max_shard_bytes=MAX_SHARD_BYTES)
  # and that export left no full host copy cached on the sharded params (np.asarray on a sharded
  # jax.Array keeps one for the array's lifetime: a second copy of the model in host memory)
  assert not [p for p, v in nnx.to_flat_state(nnx.state(one, nnx.Param))
              if getattr(v.get_value(), "_npy_value", None) is not None]
  names = sorted(p.name for p in single.iterdir())
  assert names == sorted(p.name for p in out.iterdir())
  match, mismatch, errors = filecmp.cmpfiles(single, out, names, shallow=False)
  assert not mismatch and not errors, (mismatch, errors)

  # transformers reloads it with the source model's logits
  back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="float32").eval()
  ids = np.random.RandomState(0).randint(0, hf.config.vocab_size, (2, 32))
  assert rel_err(hf_logits(back, ids), hf_logits(hf, ids)) <= 1e-5


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
