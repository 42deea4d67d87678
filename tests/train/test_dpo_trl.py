"""Our DPO against TRL's DPOTrainer (trl 1.16, the outside reference) on the same model, tokens and settings.

Both see every pair at every step (the batch is the whole set of 8 pairs), so the order each shuffles in
does not matter; both use the reference log-probs of the starting model computed once, AdamW with the same
hyperparameters, a constant learning rate and global-norm clipping at 1. The llama3 template is used
because TRL trains every token after the prompt: with chatml that would include the newline after
<|im_end|>, which we do not train (nothing the model generates follows its end-of-turn marker).

One more difference, in transformers rather than TRL: its embedding never updates the row of the config's
`pad_token_id` (`nn.Embedding(padding_idx=...)`); jaxtune trains every row. The pad token only ever pads
(it carries no gradient), so this matters only when a config names a real token as pad; here it is the
tokenizer's pad token, as in real checkpoints.
"""

import json

import numpy as np
import pytest

from tests.helpers import cli
from tests.helpers.hf_models import make_tiny_hf
from tests.helpers.tokenizers import make_tokenizer

STEPS = 4
LR = 5e-3
BETA = 0.1


def pairs():
  words = ["apple", "river", "stone", "cloud", "green", "light", "music", "table"]
  out = []
  for i in range(8):
    a, b = words[i], words[(i * 3 + 1) % 8]
    prompt = [{"role": "user", "content": f"Join {a} and {b}."}]
    if i % 2:
      prompt = [{"role": "system", "content": "Be brief."}] + prompt
    out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"{a} {b}"}],
                "rejected": [{"role": "assistant", "content": f"{b}, {a}!" if i % 3 else a}]})
  return out


def trl_history(model_dir, tok, data, out_dir):
  import torch
  from datasets import Dataset
  from transformers import AutoModelForCausalLM
  from trl import DPOConfig, DPOTrainer

  torch.manual_seed(0)
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  args = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=len(data), max_steps=STEPS,
                   learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                   max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, beta=BETA,
                   loss_type=["sigmoid"], precompute_ref_log_probs=True, logging_steps=1, report_to=[],
                   use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, save_strategy="no",
                   seed=0, dataloader_drop_last=False)
  trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(data),
                       processing_class=tok)
  trainer.train()
  return [h for h in trainer.state.log_history if "loss" in h and "rewards/chosen" in h]


def test_losses_and_rewards_equal_trl(tmp_path):
  pytest.importorskip("trl")
  # The config's special ids are the tokenizer's: transformers never updates the embedding row of
  # `pad_token_id` (nn.Embedding's padding_idx), so it must be the pad token, which only pads.
  _, tok = make_tokenizer(str(tmp_path), template="llama3")
  model_dir, _ = make_tiny_hf(tmp_path / "model", "llama", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  tok.save_pretrained(model_dir)
  data = pairs()
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in data) + "\n")
  run = tmp_path / "run"
  cli.jaxtune("train", f"--config=configs/dpo_tiny.py:{model_dir},{path}", f"--config.run.dir={run}",
              f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.data.packing=False",
              "--config.train.batch_size=16", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
              f"--config.optim.lr={LR}", "--config.optim.schedule=constant", "--config.optim.warmup_steps=0",
              "--config.optim.b2=0.999", "--config.optim.weight_decay=0.0", "--config.optim.clip_norm=1.0",
              f"--config.dpo.beta={BETA}", "--config.checkpoint.every=0")
  ours = cli.metrics(str(run))
  theirs = trl_history(model_dir, tok, data, tmp_path / "trl")
  assert len(ours) == len(theirs) == STEPS
  keys = {"loss": "loss", "rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
          "reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracies", "logps_chosen": "logps/chosen",
          "logps_rejected": "logps/rejected"}
  for step, (a, b) in enumerate(zip(ours, theirs), start=1):
    for k, tk in keys.items():
      tol = 5e-6 * max(1.0, abs(b[tk]))  # measured: <= 2.4e-7 on the loss, <= 1.7e-6 on rewards, 3e-7 rel. logps
      if k == "reward_accuracy" and step == 1:
        continue  # at step 1 every reward is 0 up to float noise: the fraction of noise pairs is arbitrary
      assert abs(a[k] - b[tk]) <= tol, (step, k, a[k], b[tk])
  assert abs(ours[0]["loss"] - np.log(2)) < 1e-6 and ours[-1]["loss"] < ours[0]["loss"] - 0.05
