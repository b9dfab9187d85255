"""The training runs `gpu_suite.py` measures on one GPU: a LLaMA shape (random init), collie
with AdamW (eager, or with `compile: true`) or LOMO, or transformers' own Trainer on the same
model as the baseline; TGS (tokens/GPU/s), MFU and peak memory of one run, in this process.

bf16 (AdamW: fp32 master weights + bf16 autocast, fused AdamW on GPUs; LOMO: bf16 storage, no
master copy), SDPA attention (FlashAttention kernels on GPUs), activation checkpointing. The
baseline is `transformers.Trainer` with bf16, gradient checkpointing and `adamw_torch_fused`.
`gpu_suite.py` runs each in its own process and prints them in its one table.
"""

from __future__ import annotations

import statistics
import time

import torch

BASELINE = "transformers"  # the runner name of transformers' Trainer; the others are collie's


class _Clock:
    """Step times, synchronised with the GPU."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.began = time.perf_counter()

    def stop(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.began)


def child(shape: str, runner: str, seq: int, steps: int, warmup: int) -> dict:
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path, shape_config
    from collie.models.registry import spec_for
    from collie.monitors.monitors import peak_flops

    model_config = shape_config(shape, AutoTokenizer.from_pretrained(bundled_tokenizer_path()))
    g = torch.Generator().manual_seed(0)
    records = [{"tokens": torch.randint(0, model_config.vocab_size, (seq,), generator=g).tolist()}
               for _ in range(warmup + steps)]
    run = _transformers_trainer if runner == BASELINE else _collie_trainer
    params, times = run(model_config, runner, records)
    step = statistics.median(times[warmup:])
    tgs = seq / step
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_flops(device, torch.bfloat16)  # every run computes in bf16 on GPUs
    spec = spec_for(model_config)
    mfu = spec.flops_per_token(spec.dims(model_config), seq, params) * tgs / peak if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"params_b": params / 1e9, "step_s": step, "tgs": tgs, "mfu": mfu, "peak_gib": memory}


def _collie_trainer(model_config, runner: str, records: list[dict]) -> tuple[int, list[float]]:
    from collie import CollieConfig, LlamaForCausalLM
    from collie.data import CollieDatasetForTraining
    from collie.trainer import Callback, Trainer

    cuda = torch.cuda.is_available()
    lomo = runner == "lomo"
    # LOMO keeps bf16 weights only; AdamW keeps fp32 master weights and computes under autocast.
    dtype = torch.bfloat16 if lomo and cuda else torch.float32
    config = CollieConfig(model_config=model_config, train_micro_batch_size=1, max_steps=len(records),
                          logging=[], checkpointing=True, mixed_precision="bf16" if cuda and not lomo else "no",
                          compile=runner == "adamw_compile")
    config.data.max_length = len(records[0]["tokens"])
    config.optimizer.name = "lomo" if lomo else "adamw"
    config.optimizer.lr = 1e-5
    model = LlamaForCausalLM.from_config(model_config, seed=0, dtype=dtype)
    clock = _Clock()

    class Timer(Callback):
        def on_train_batch_begin(self, trainer, batch) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, loss) -> None:
            clock.stop()

    Trainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[Timer()]).train()
    return sum(p.numel() for p in model.parameters()), clock.times


def _transformers_trainer(model_config, runner: str, records: list[dict]) -> tuple[int, list[float]]:
    """The baseline: transformers' LlamaForCausalLM and its Trainer, as its docs set it up for
    memory-bound fine-tuning: bf16 mixed precision, gradient checkpointing, fused AdamW."""
    import tempfile

    from transformers import LlamaForCausalLM as HFLlama
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    model = HFLlama(model_config)
    clock = _Clock()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.stop()

    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="collie-gpu-bench-"), per_device_train_batch_size=1,
                             max_steps=len(records), learning_rate=1e-5, bf16=cuda, use_cpu=not cuda,
                             gradient_checkpointing=True, optim="adamw_torch_fused" if cuda else "adamw_torch",
                             report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0)
    dataset = [{"input_ids": r["tokens"], "labels": r["tokens"]} for r in records]
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Timer()]).train()
    return sum(p.numel() for p in model.parameters()), clock.times
