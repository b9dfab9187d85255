"""German → English translation with ChatGLM-6B, in CoLLiE's own API, running on collie: an
8-stage pipeline with fp16 (DeepSpeed-style settings), AdamW under a StepLR schedule (the learning
rate × 0.9 at every step), 128 micro-batches per step, and after every epoch the perplexity of
held-out pairs and the BLEU of greedy translations (decoded samples in the log too). The monitors'
columns and both evaluators' results go to a CSV file under ./ds_logs/ (for W&B as CoLLiE's
original, add `"wandb": {"enabled": True, "team": ..., "project": ..., "group": ...}` to
`monitor_config`).

    torchrun --nproc_per_node=8 examples/collie_api/finetune_chatglm_for_translation.py

Prompts follow ChatGLM-6B's chat format and end with its [gMASK] and <sop> tokens, named by the
model's config, so the same script runs on any ChatGLM-6B checkpoint and tokenizer. The pairs
come from the small German-English sample next to collie's own translation example, repeated to
the 8000 rows CoLLiE trained on; for the real data use
`datasets.load_dataset("wmt/wmt16", "de-en", split="train[:8000]")` (IWSLT2017's rows, as parquet) and
set REPEAT = 1.
`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing),
or a model directory; the tokenizer's own code is run only where transformers needs it
(trust_remote_code, as CoLLiE), collie itself never runs a checkpoint's code.
"""

import json
import os

import torch
from transformers import AutoTokenizer, GenerationConfig

from collie import (
    BleuMetric,
    ChatGLMForCausalLM,
    CollieConfig,
    CollieDatasetForGeneration,
    CollieDatasetForTraining,
    DecodeMetric,
    EvalMonitor,
    EvaluatorForGeneration,
    EvaluatorForPerplexity,
    LossMonitor,
    LRMonitor,
    MemoryMonitor,
    PPLMetric,
    TGSMonitor,
    Trainer,
)

pretrained_model = "THUDM/chatglm-6b"
PAIRS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "translation", "fixture.jsonl")
REPEAT = 500  # the sample file holds 16 pairs: 8000 rows, as CoLLiE's train[:8000]


def rows(path: str) -> list[dict]:
    """IWSLT/WMT rows, {"translation": {"de", "en"}}, from a JSON-lines file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


config = CollieConfig.from_pretrained(pretrained_model, trust_remote_code=True)
config.pp_size = 8
config.train_micro_batch_size = 1
config.eval_batch_size = 1
config.gradient_accumulation_steps = 128
config.eval_per_n_epochs = 1
config.train_epochs = 10
config.ds_config = {
    "fp16": {"enabled": True},
    "monitor_config": {"enabled": True, "tag": "translation",
                       "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}
config.seed = 1024

tokenizer = AutoTokenizer.from_pretrained(pretrained_model, trust_remote_code=True)
# ChatGLM-6B answers after [gMASK] <sop>: the tokens its config names (they mark where the prompt ends).
gmask, sop = tokenizer.convert_ids_to_tokens([config.model_config.gmask_token_id, config.model_config.bos_token_id])


def prompt(pair: dict) -> str:
    return f"[Round 0]\n问：把下面这句话从德语翻译成英语. {pair['de']}\n答：{gmask}{sop}"


pairs = [row["translation"] for row in rows(PAIRS)]
train_records = [{"input": prompt(pair), "output": pair["en"]} for pair in pairs * REPEAT]
# The first 1% of the training pairs measure perplexity; the rest train.
held_out = max(1, len(train_records) // 100)
ppl_records, train_records = train_records[:held_out], train_records[held_out:]
bleu_records = [{"text": prompt(pair), "target": " ".join(pair["en"].split())} for pair in pairs]

# The prompts carry their own special tokens; each answer ends with the tokenizer's eos (<eop>).
train_dataset = CollieDatasetForTraining(train_records, tokenizer=tokenizer, add_special_tokens=False)
eval_dataset_ppl = CollieDatasetForTraining(ppl_records, tokenizer=tokenizer, add_special_tokens=False)
eval_dataset_bleu = CollieDatasetForGeneration(bleu_records, tokenizer=tokenizer, add_special_tokens=False)

model = ChatGLMForCausalLM.from_pretrained(pretrained_model, config=config)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer=optimizer, step_size=1, gamma=0.9)

evaluator_ppl = EvaluatorForPerplexity(model=model, config=config, dataset=eval_dataset_ppl,
                                       monitors=[EvalMonitor(config)], metrics={"ppl": PPLMetric(gather_result=True)})
evaluator_bleu = EvaluatorForGeneration(
    model=model, config=config, dataset=eval_dataset_bleu, monitors=[EvalMonitor(config)],
    metrics={"bleu": BleuMetric(gather_result=True, ngram=1), "decode": DecodeMetric()},
    generation_config=GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                       max_new_tokens=100))

trainer = Trainer(model=model, tokenizer=tokenizer, lr_scheduler=lr_scheduler, config=config, optimizer=optimizer,
                  train_dataset=train_dataset,
                  monitors=[LossMonitor(config), TGSMonitor(config), MemoryMonitor(config), LRMonitor(config)],
                  evaluators=[evaluator_ppl, evaluator_bleu])
trainer.train()
