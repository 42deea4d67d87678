"""`data stats` / `data inspect` views."""

from jaxtune.config import Config, default_config
from jaxtune.data import report
from tests.data.conftest import conv, write_jsonl


def _cfg(tok_dir, data):
  c = default_config()
  c.model.path = tok_dir
  c.data.train = ({"path": data, "format": "messages", "weight": 1.0},)
  c.data.seq_len = 256
  return Config.from_dict(c)


def test_stats_and_inspect(tmp_path, tok_dirs, llama3_tok):
  data = write_jsonl(tmp_path / "d.jsonl", ["{bad"] + [conv(i) for i in range(5)])
  cfg = _cfg(tok_dirs["llama3"], data)
  s = report.stats(cfg)
  assert (s["records"], s["malformed"], s["examples"]) == (6, 1, 5)
  assert s["samples"][0]["where"] == f"{data}:1" and 0 < s["packing_efficiency"] <= 1
  shown = report.inspect(cfg, 2)
  assert len(shown) == 2
  assert shown[0]["text"].endswith("<|end_header_id|>\n\n[[The answer is 0.<|eot_id|>]]")
  assert sum(shown[0]["loss_mask"]) == len(llama3_tok.encode("The answer is 0.<|eot_id|>", add_special_tokens=False))


def test_render_example_marks_trained_spans(llama3_tok):
  ids = llama3_tok.encode("ab cd", add_special_tokens=False)
  text = report.render_example(llama3_tok, ids, [0] * (len(ids) - 1) + [1])
  assert text.startswith("ab") and text.endswith("]]") and "[[" in text
  assert "\033[" in report.render_example(llama3_tok, ids, [1] * len(ids), color=True)
