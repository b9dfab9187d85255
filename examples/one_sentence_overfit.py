"""CoLLiE's tutorial, against collie's API: overfit one sentence, then generate it back.

    python examples/one_sentence_overfit.py            # single process
    torchrun --nproc_per_node 8 examples/one_sentence_overfit.py dp_size=2 tp_size=2 pp_size=2   # 3D

Uses a random-initialised tiny LLaMA and the bundled tokenizer, so it runs offline on a CPU.
Point MODEL_DIR at a real Hugging Face LLaMA directory to fine-tune that instead.
"""

import os
import sys
import tempfile

import torch
from transformers import AutoTokenizer

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.init_model import init_model
from collie.models import GPTLMLoss
from collie.monitors import EvalMonitor, LossMonitor, MemoryMonitor, StepTimeMonitor, TGSMonitor
from collie.optim import Lomo
from collie.trainer import Trainer

MODEL_DIR = os.environ.get("MODEL_DIR") or init_model("tiny", tempfile.mkdtemp(), seed=0)

config = CollieConfig.from_pretrained(MODEL_DIR).apply_overrides(sys.argv[1:])  # e.g. tp_size=2 pp_size=2
config.train_epochs, config.train_micro_batch_size = 1, 4
config.gradient_accumulation_steps = max(config.gradient_accumulation_steps, config.pp_size)  # 1F1B's micro-batches
config.eval_per_n_steps, config.logging = 50, ["console"]
model = LlamaForCausalLM.from_pretrained(MODEL_DIR, config=config)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
train_dataset = CollieDatasetForTraining(
    [{"input": "Collie is a python package for ", "output": "finetuning large language models."}] * 600,
    tokenizer)
optimizer = Lomo(model, lr=0.3, clip_grad_norm=5.0)
trainer = Trainer(model=model, config=config, loss_fn=GPTLMLoss(-100), optimizer=optimizer,
                  train_dataset=train_dataset,
                  monitors=[StepTimeMonitor(config), TGSMonitor(config), MemoryMonitor(config),
                            LossMonitor(config), EvalMonitor(config)],
                  evaluators=[EvaluatorForPerplexity(model=model, config=config, dataset=train_dataset[:32],
                                                     metrics={"ppl": PPLMetric()})])
trainer.train()

prompt = torch.tensor([tokenizer("Collie is a python package for ")["input_ids"]])
# The model as the layout holds it: every rank takes part (a pipeline's stages decode together).
out = trainer.parallel.eval_model.generate(prompt, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id)
if trainer.runtime.is_main:
    print("generated:", tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True))
