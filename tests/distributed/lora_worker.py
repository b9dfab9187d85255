"""Run under torchrun: LoRA training (and prompt tuning) of the same seed checkpoint under several
layouts; writes the per-step losses, and each layout exports its adapters in peft's format."""

import json
import os
import sys

import torch.distributed as dist

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

# The global batch stays 4 samples (micro × grad_accum × dp); float64 unless a row says otherwise.
LORA = ["peft.type=lora", "peft.r=4", "peft.alpha=8", "peft.target_modules=[q_proj,v_proj,o_proj,down_proj]"]
PROMPT = ["peft.type=prompt_tuning", "peft.num_virtual_tokens=3", "optimizer.lr=0.1"]
# QLoRA: a 4-bit NF4 base (bitsandbytes has no float64 kernels: compared at fp32 precision).
QLORA = ["quantization_config={load_in_4bit: true}", "param_dtype=float32"]
LAYOUTS = {
    "dp2": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1"],
    "zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1", "checkpointing=true"],
    "tp2": ["dp_size=1", "tp_size=2"],
    "tp2_sequence_parallel": ["dp_size=1", "tp_size=2", "sequence_parallel=true", "loss_parallel=true"],
    "pp2": ["dp_size=1", "pp_size=2", "pp_schedule=1f1b", "checkpointing=true"],
    "lomo/dp2": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1", "optimizer.name=lomo", "optimizer.lr=0.05"],
    "lomo/tp2": ["dp_size=1", "tp_size=2", "optimizer.name=lomo", "optimizer.lr=0.05"],
    # InternLM2 stores q/k/v fused: adapters are split and sharded by kv-group like the weight.
    "internlm2/tp2": ["dp_size=1", "tp_size=2"],
    "internlm2/zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1"],
    # A bf16 base with fp32 adapters (compute in fp32 on CPU): compared by loss at fp32 precision.
    "bf16/zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1", "param_dtype=bfloat16"],
    # Prompt tuning, as CoLLiE's example runs it: under data and tensor parallel.
    "prompt/zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1", *PROMPT],
    "prompt/tp2_left": ["dp_size=1", "tp_size=2", "data.padding_side=left", *PROMPT],
    "qlora/dp2": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1", *QLORA],
}
LAYOUTS_4 = {
    "dp2_tp2": ["dp_size=2", "tp_size=2", "train_micro_batch_size=1"],
    "pp2_dp2_zero3": ["dp_size=2", "pp_size=2", "zero_stage=3", "train_micro_batch_size=1"],
    "prompt/dp2_tp2": ["dp_size=2", "tp_size=2", "train_micro_batch_size=1", *PROMPT],
}


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def run(model_dir: str, records: str, overrides: list[str], export: str = "") -> list[float]:
    config = CollieConfig.load(None, ["train_micro_batch_size=2", "gradient_accumulation_steps=2", "max_steps=8",
                                      "logging=[]", "optimizer.lr=0.01", "optimizer.clip_grad_norm=1.0",
                                      "data.max_length=16", "param_dtype=float64", *LORA, *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    with open(records) as f:
        dataset = CollieDatasetForTraining(json.load(f))
    losses = Losses()
    trainer = Trainer(model, config, train_dataset=dataset, callbacks=[losses])
    trainer.train()
    if export:
        trainer.save_model(export)
    return losses.values


def model_for(model_dir: str, name: str) -> str:
    return f"{model_dir}_internlm2" if name.startswith("internlm2/") else model_dir


def main() -> None:
    model_dir, records, out = sys.argv[1:4]
    layouts = LAYOUTS_4 if os.environ["WORLD_SIZE"] == "4" else LAYOUTS
    results = {name: run(model_for(model_dir, name), records, overrides, export=f"{out}.{name.replace('/', '-')}")
               for name, overrides in layouts.items()}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
