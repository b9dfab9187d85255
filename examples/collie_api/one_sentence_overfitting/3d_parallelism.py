"""CoLLiE's one-sentence overfitting under full 3D parallelism, in CoLLiE's own API, running on
collie: LLaMA learns one sentence by heart on 8 processes — tensor parallel 2 × pipeline parallel 2
× data parallel 2 — with torch's AdamW built on `model.parameters()` before the Trainer (collie
points it at the parallel parameters), fp16 as a DeepSpeed setting, four monitors writing a CSV
under ./ds_logs/, and a generation evaluator whose DecodeMetric logs what the model says after
"Collie is" as it learns.

    torchrun --nproc_per_node=8 examples/collie_api/one_sentence_overfitting/3d_parallelism.py

`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing),
or a model directory. The trained model is written to ./llama-3d (Hugging Face format).
"""

import torch
from transformers import AutoTokenizer
from transformers.generation.utils import GenerationConfig

from collie.config import CollieConfig
from collie.controller import EvaluatorForGeneration, Trainer
from collie.metrics.decode import DecodeMetric
from collie.models.llama.model import LlamaForCausalLM
from collie.utils.monitor import EvalMonitor, LossMonitor, MemoryMonitor, TGSMonitor

pretrained_model = "huggyllama/llama-7b"

tokenizer = AutoTokenizer.from_pretrained(pretrained_model, padding_side="left")
config = CollieConfig.from_pretrained(pretrained_model)
config.tp_size = 2
config.pp_size = 2
config.dp_size = 2
config.train_epochs = 1
config.train_micro_batch_size = 2
config.gradient_accumulation_steps = 1
config.use_flash = False
config.eval_batch_size = 1
config.eval_per_n_steps = 20
config.ds_config = {
    "fp16": {"enabled": True},
    "monitor_config": {"enabled": True, "tag": "3d", "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}

model = LlamaForCausalLM.from_pretrained(pretrained_model, config=config)
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)

sentence = "Collie is a python package for finetuning large language models." + tokenizer.eos_token
train_sample = tokenizer(sentence, return_tensors="pt").input_ids.squeeze(0)
eval_sample = tokenizer("Collie is", return_tensors="pt")
train_dataset = [{"input_ids": train_sample, "labels": train_sample} for _ in range(12800)]
eval_dataset = [{"input_ids": eval_sample.input_ids, "attention_mask": eval_sample.attention_mask}]

monitors = [TGSMonitor(config), MemoryMonitor(config), LossMonitor(config), EvalMonitor(config)]
evaluator = EvaluatorForGeneration(
    model=model, dataset=eval_dataset, tokenizer=tokenizer, config=config,
    generation_config=GenerationConfig(max_new_tokens=32, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id, use_cache=False),
    metrics={"decode": DecodeMetric()}, monitors=[EvalMonitor(config)])

trainer = Trainer(model=model, optimizer=optimizer, config=config, train_dataset=train_dataset,
                  monitors=monitors, evaluators=[evaluator])
trainer.train()
trainer.save_model("./llama-3d")
