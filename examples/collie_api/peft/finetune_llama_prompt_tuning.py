"""Prompt tuning of LLaMA on IMDB reviews, in CoLLiE's own API, running on collie: peft's
`PromptTuningConfig` set as `config.peft_config` (8 virtual tokens that start as the embeddings of
an instruction), tensor parallel 2 × data parallel 2, fp16 and a CSV monitor (DeepSpeed-style
settings), Adam over the trainable parameters, and a perplexity and a decoding evaluator (the
decoded samples appended to ./result/decode.jsonl). Only the prompt trains; the base model is
frozen. At the end the prompt is written in peft's format (./prompt_tuning/: adapter_config.json
and adapter_model.safetensors, which `peft.PeftModel.from_pretrained(base, path)` loads).

    torchrun --nproc_per_node=4 examples/collie_api/peft/finetune_llama_prompt_tuning.py

Layout: prompt tuning runs under data and tensor parallel (collie refuses pipeline parallel and
sequence parallel for it: the prompt goes in front of the sequence inside the model's forward, so
every rank must see the sequence's start), which is CoLLiE's own layout here, tp 2 × dp 2.

`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing),
or a model directory. The reviews come from the small IMDB-format file next to collie's own
classification example; for the real dataset use `datasets.load_dataset("imdb", split="train")`.
"""

import json
import os

import torch
from peft import PromptTuningConfig, PromptTuningInit, TaskType
from transformers import AutoTokenizer

from collie.config import CollieConfig
from collie.controller.evaluator import EvaluatorForGeneration, EvaluatorForPerplexity
from collie.controller.trainer import Trainer
from collie.data import CollieDatasetForTraining
from collie.metrics import DecodeMetric, PPLMetric
from collie.models.llama.model import LlamaForCausalLM
from collie.module import GPTLMLoss
from collie.utils.monitor import EvalMonitor, LossMonitor, MemoryMonitor, StepTimeMonitor, TGSMonitor

# 1. Where things are: the base model, and the folder the decoded samples and the prompt go to.
pretrained_model = "decapoda-research/llama-7b-hf"
IMDB_ROWS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "classification",
                         "fixture.jsonl")
REPEAT = 40  # the sample file holds 24 reviews: seen REPEAT times, as a real dataset's size would give
save_path = "./result/"
os.makedirs(save_path, exist_ok=True)

# 2. The run's settings: the layout, the batch sizes, the prompt, DeepSpeed-style precision and monitor.
config = CollieConfig.from_pretrained(pretrained_model)
config.tp_size = 2
config.dp_size = 2
config.pp_size = 1
config.train_epochs = 1
config.train_micro_batch_size = 1
config.eval_batch_size = 32
config.eval_per_n_steps = 100
config.checkpointing = False
model_config = config.model_config
config.peft_config = PromptTuningConfig(
    task_type=TaskType.CAUSAL_LM,
    prompt_tuning_init=PromptTuningInit.TEXT,
    num_virtual_tokens=8,
    token_dim=model_config.hidden_size,
    num_attention_heads=model_config.num_attention_heads,
    num_layers=model_config.num_hidden_layers,
    prompt_tuning_init_text="Classify if the comment is positive or negative.",
    tokenizer_name_or_path=pretrained_model,
)
config.ds_config = {
    "fp16": {"enabled": True},
    "monitor_config": {"enabled": True, "tag": "prompt_tuning_imdb",
                       "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}

# 3. The tokenizer: prompts to complete are padded on the left.
tokenizer = AutoTokenizer.from_pretrained(pretrained_model, padding_side="left")

# 4. The data: each review followed by its sentiment; the first 32 also evaluate.
with open(IMDB_ROWS, encoding="utf-8") as f:
    reviews = [json.loads(line) for line in f if line.strip()]
train_dataset = [{"input": f"{row['text']}.", "output": "positive." if row["label"] else "negative."}
                 for row in reviews * REPEAT]
train_dataset = CollieDatasetForTraining(train_dataset, tokenizer)[:-32]
eval_dataset = train_dataset[:32]

# 5. The base model (the Trainer puts the prompt in front of it and freezes it).
model = LlamaForCausalLM.from_pretrained(pretrained_model, config, use_cache=True)

# 6. The optimizer, over the parameters that train.
optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=2e-5)

# 7. Monitors.
monitors = [StepTimeMonitor(config), TGSMonitor(config), MemoryMonitor(config), LossMonitor(config),
            EvalMonitor(config)]

# 8. Evaluators: perplexity, and the decoded continuations (logged and saved).
evaluator_ppl = EvaluatorForPerplexity(model=model, config=config, dataset=eval_dataset,
                                       monitors=[EvalMonitor(config)], metrics={"ppl": PPLMetric()})
evaluator_decode = EvaluatorForGeneration(
    model=model, config=config, tokenizer=tokenizer, dataset=eval_dataset, monitors=[EvalMonitor(config)],
    metrics={"decode": DecodeMetric(save_to_file=True, save_path=os.path.join(save_path, "decode.jsonl"))})

# 9. The Trainer.
trainer = Trainer(model=model, config=config, loss_fn=GPTLMLoss(-100), optimizer=optimizer,
                  train_dataset=train_dataset, monitors=monitors, evaluators=[evaluator_ppl, evaluator_decode])

# 10. Train (evaluating as it goes), then write the prompt in peft's format.
trainer.train()
trainer.save_model("./prompt_tuning")
