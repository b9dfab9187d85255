"""Run under torchrun: a model type collie has no family for (Phi-3, as transformers' own class)
trained under data parallel and ZeRO with AdamW, LOMO and LoRA; writes the per-step losses."""

import json
import sys

import torch.distributed as dist

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

OPTIMIZERS = {"adamw": [], "lomo": ["optimizer.name=lomo", "optimizer.lr=0.05", "optimizer.clip_grad_norm=null"],
              "lora": ["peft.type=lora", "peft.target_modules=[qkv_proj,o_proj]", "optimizer.lr=0.01"]}
LAYOUTS = {"dp2": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1"],
           "zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1", "checkpointing=true"]}


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def run(model_dir: str, records: str, overrides: list[str], export: str = "") -> list[float]:
    config = CollieConfig.load(None, ["train_micro_batch_size=2", "gradient_accumulation_steps=2", "max_steps=6",
                                      "logging=[]", "optimizer.lr=0.001", "data.max_length=16",
                                      "param_dtype=float64", *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    with open(records) as f:
        dataset = CollieDatasetForTraining(json.load(f))
    losses = Losses()
    trainer = Trainer(model, config, train_dataset=dataset, callbacks=[losses])
    trainer.train()
    if export:
        trainer.save_model(export)
    return losses.values


def main() -> None:
    model_dir, records, out = sys.argv[1:4]
    results = {f"{optimizer}/{layout}": run(model_dir, records, overrides + settings,
                                            export=f"{out}.{layout}" if optimizer == "adamw" else "")
               for layout, overrides in LAYOUTS.items() for optimizer, settings in OPTIMIZERS.items()}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
