"""CoLLiE's README quickstart, in CoLLiE's own API, running on collie: MOSS-moon-003 fine-tuned with
LOMO under tensor parallel, DeepSpeed-style settings (fp16, ZeRO-3 with CPU offload, a CSV monitor in
./ds_logs/), five monitors, a perplexity and a generation evaluator, and a Gradio page that answers
from the weights being trained.

    torchrun --nproc_per_node=2 examples/collie_api/finetune_moss_for_training.py

`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing), or
a model directory.
"""

from transformers import AutoTokenizer

from collie.config import CollieConfig
from collie.controller.evaluator import EvaluatorForGeneration, EvaluatorForPerplexity
from collie.controller.trainer import Trainer
from collie.data import CollieDataLoader, CollieDatasetForTraining  # noqa: F401 - the quickstart's imports
from collie.metrics import DecodeMetric, PPLMetric
from collie.models.moss_moon import Moss003MoonForCausalLM
from collie.module import GPTLMLoss
from collie.optim.lomo import Lomo
from collie.utils.data_provider import GradioProvider
from collie.utils.monitor import EvalMonitor, LossMonitor, MemoryMonitor, StepTimeMonitor, TGSMonitor

pretrained_model = "fnlp/moss-moon-003-sft"

config = CollieConfig.from_pretrained(pretrained_model, trust_remote_code=True)
config.tp_size = 2
config.dp_size = 1
config.pp_size = 1
config.train_epochs = 1
config.eval_per_n_steps = 100
config.eval_per_n_epochs = 1
config.train_micro_batch_size = 16
config.eval_batch_size = 1
config.ds_config = {
    "fp16": {"enabled": True},
    "zero_allow_untested_optimizer": True,
    "zero_force_ds_cpu_optimizer": False,
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False}},
    "monitor_config": {"enabled": True, "tag": "adan", "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}

tokenizer = AutoTokenizer.from_pretrained(pretrained_model, trust_remote_code=True)

train_dataset = [{"input": "Collie is a python package for ", "output": "finetuning large language models."}
                 for _ in range(10000)]
train_dataset = CollieDatasetForTraining(train_dataset, tokenizer)
eval_dataset = train_dataset[:32]

model = Moss003MoonForCausalLM.from_pretrained(pretrained_model, config=config)

optimizer = Lomo(model, lr=0.001, clip_grad_norm=5.0)

monitors = [StepTimeMonitor(config), TGSMonitor(config), MemoryMonitor(config), LossMonitor(config),
            EvalMonitor(config)]

evaluator_ppl = EvaluatorForPerplexity(model=model, config=config, dataset=eval_dataset,
                                       monitors=[EvalMonitor(config)], metrics={"ppl": PPLMetric()})
evaluator_decode = EvaluatorForGeneration(model=model, config=config, tokenizer=tokenizer, dataset=eval_dataset,
                                          monitors=[EvalMonitor(config)], metrics={"decode": DecodeMetric()})

trainer = Trainer(model=model, config=config, loss_fn=GPTLMLoss(-100), optimizer=optimizer,
                  train_dataset=train_dataset, monitors=monitors, evaluators=[evaluator_ppl, evaluator_decode],
                  data_provider=GradioProvider(tokenizer))
trainer.train()
