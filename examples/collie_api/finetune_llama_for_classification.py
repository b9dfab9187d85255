"""IMDB sentiment with LLaMA, in CoLLiE's own API, running on collie: 4-way data parallel under
ZeRO-3 with fp16 (DeepSpeed-style settings), AdamW with a cosine schedule, trained as a completion
("... The sentiment of this comment is: positive."), and evaluated every 300 steps and at the end
of each epoch two ways: perplexity on held-out reviews, and accuracy of choosing the likelier of
the two answers. The monitors' columns and the evaluators' results go to a CSV file under
./ds_logs/.

    torchrun --nproc_per_node=4 examples/collie_api/finetune_llama_for_classification.py

`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing),
or a model directory. The reviews come from the small IMDB-format file next to collie's own
classification example; for the real dataset, replace `rows(...)` with
`datasets.load_dataset("imdb", split="train")` (and `split="test"` for the evaluation rows) and
set REPEAT = 1.
"""

import json
import os

import torch
from transformers import AutoTokenizer

from collie import (
    AccuracyMetric,
    CollieConfig,
    CollieDatasetForClassification,
    CollieDatasetForTraining,
    EvalMonitor,
    EvaluatorForClassfication,
    EvaluatorForPerplexity,
    LlamaForCausalLM,
    LossMonitor,
    LRMonitor,
    MemoryMonitor,
    PPLMetric,
    TGSMonitor,
    Trainer,
)

pretrained_model = "decapoda-research/llama-7b-hf"
IMDB_ROWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "classification", "fixture.jsonl")
REPEAT = 100  # the sample file holds 24 reviews: seen REPEAT times, as a real dataset's size would give


def rows(path: str) -> list[dict]:
    """IMDB's rows, {"text", "label"} (1: positive), from a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


config = CollieConfig.from_pretrained(pretrained_model)
config.dp_size = 4
config.train_micro_batch_size = 16
config.eval_batch_size = 2
config.gradient_accumulation_steps = 1
config.train_epochs = 1
config.eval_per_n_steps = 300
config.eval_per_n_epochs = 1
config.ds_config = {
    "fp16": {"enabled": True},
    "zero_optimization": {"stage": 3},
    "monitor_config": {"enabled": True, "tag": "imdb", "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}
config.seed = 1024

tokenizer = AutoTokenizer.from_pretrained(pretrained_model)
model = LlamaForCausalLM.from_pretrained(pretrained_model, config=config)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)

reviews = rows(IMDB_ROWS)
train_records = [{"input": f"Comment: {row['text']}. The sentiment of this comment is: ",
                  "output": "positive." if row["label"] else "negative."} for row in reviews * REPEAT]
# The first 1% of the training records measure perplexity; the rest train.
held_out = max(1, len(train_records) // 100)
ppl_records, train_records = train_records[:held_out], train_records[held_out:]
# Classification records in CoLLiE's form: the answers to choose from, and the right one's index.
cls_records = [{"input": f"Comment: {row['text']}. The sentiment of this comment is: ",
                "output": ["negative.", "positive."], "target": row["label"]} for row in reviews][:1000]

train_dataset = CollieDatasetForTraining(train_records, tokenizer=tokenizer)
eval_dataset_ppl = CollieDatasetForTraining(ppl_records, tokenizer=tokenizer)
eval_dataset_cls = CollieDatasetForClassification(cls_records, tokenizer=tokenizer)

evaluator_ppl = EvaluatorForPerplexity(model=model, config=config, dataset=eval_dataset_ppl,
                                       monitors=[EvalMonitor(config)], metrics={"ppl": PPLMetric(gather_result=True)})
evaluator_cls = EvaluatorForClassfication(model=model, config=config, dataset=eval_dataset_cls,
                                          monitors=[EvalMonitor(config)],
                                          metrics={"acc": AccuracyMetric(gather_result=True)})

trainer = Trainer(model=model, lr_scheduler=lr_scheduler, config=config, optimizer=optimizer,
                  train_dataset=train_dataset,
                  monitors=[LossMonitor(config), TGSMonitor(config), MemoryMonitor(config), LRMonitor(config)],
                  evaluators=[evaluator_ppl, evaluator_cls])
trainer.train()
