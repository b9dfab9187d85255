"""BillSum summarisation with LLaMA, in CoLLiE's own API, running on collie: 8-way tensor parallel
with fp16 (DeepSpeed-style settings), AdamW under a StepLR schedule (the learning rate × 0.9 at
every step), 128 accumulated micro-batches per step, and ROUGE of greedy summaries on the dev
bills after every epoch. The monitors' columns and ROUGE go to a CSV file under ./ds_logs/ (for
W&B as CoLLiE's original, add `"wandb": {"enabled": True, "team": ..., "project": ..., "group": ...}`
to `monitor_config`).

    torchrun --nproc_per_node=8 examples/collie_api/finetune_llama_for_summary.py \\
        [--train_path us_train.jsonl --dev_path ca_test.jsonl --repeat 1]

The bills are JSON lines of {"text", "summary"} (BillSum's format); the defaults are the small
sample next to collie's own summarisation example, repeated `--repeat` times so that an epoch
has a step. `--model_path` is a hub id read from the local Hugging Face cache (collie downloads
nothing), or a model directory.
"""

import argparse
import json
import os

import torch
from transformers import AutoTokenizer, GenerationConfig

from collie import (
    CollieConfig,
    CollieDatasetForGeneration,
    CollieDatasetForTraining,
    EvalMonitor,
    EvaluatorForGeneration,
    LlamaForCausalLM,
    LossMonitor,
    LRMonitor,
    MemoryMonitor,
    TGSMonitor,
)
from collie.controller import Trainer
from collie.metrics import RougeMetric

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "summarization", "fixture.jsonl")


def load_bills(path: str) -> list[dict]:
    with open(path, encoding="utf8") as f:
        return [json.loads(line) for line in f if line.strip()]


def prompt(bill: dict) -> str:
    """The bill's first 500 words, then the cue the summary follows."""
    return f"Text: {' '.join(bill['text'].split()[:500])} \nSummary: "


parser = argparse.ArgumentParser()
parser.add_argument("--train_path", default=SAMPLE)
parser.add_argument("--dev_path", default=SAMPLE)
parser.add_argument("--repeat", type=int, default=16, help="how many times the training bills are seen per epoch")
parser.add_argument("--model_path", default="decapoda-research/llama-7b-hf")
args = parser.parse_args()

config = CollieConfig.from_pretrained(args.model_path)
config.tp_size = 8
config.train_micro_batch_size = 1
config.eval_batch_size = 1
config.gradient_accumulation_steps = 128
config.eval_per_n_epochs = 1
config.train_epochs = 10
config.ds_config = {
    "fp16": {"enabled": True},
    "monitor_config": {"enabled": True, "tag": "summary",
                       "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}
config.seed = 1024

tokenizer = AutoTokenizer.from_pretrained(args.model_path)
train_dataset = CollieDatasetForTraining([{"input": prompt(bill), "output": bill["summary"]}
                                          for bill in load_bills(args.train_path) * args.repeat], tokenizer=tokenizer)
eval_dataset = CollieDatasetForGeneration([{"text": prompt(bill), "target": bill["summary"]}
                                           for bill in load_bills(args.dev_path)], tokenizer=tokenizer)

model = LlamaForCausalLM.from_pretrained(args.model_path, config=config)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer=optimizer, step_size=1, gamma=0.9)

evaluator_rouge = EvaluatorForGeneration(
    model=model, config=config, dataset=eval_dataset, monitors=[EvalMonitor(config)],
    metrics={"rouge": RougeMetric()},
    generation_config=GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       max_new_tokens=100))

trainer = Trainer(model=model, tokenizer=tokenizer, lr_scheduler=lr_scheduler, config=config, optimizer=optimizer,
                  train_dataset=train_dataset,
                  monitors=[LossMonitor(config), TGSMonitor(config), MemoryMonitor(config), LRMonitor(config)],
                  evaluators=[evaluator_rouge])
trainer.train()
