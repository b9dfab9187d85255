"""Single-GPU throughput and memory: 1B and 7B LLaMA shapes (random init), collie with AdamW
(eager and with `compile: true`) and LOMO, and transformers' own Trainer on the same model as
the baseline.

bf16 (AdamW: fp32 master weights + bf16 autocast, fused AdamW on GPUs; LOMO: bf16 storage, no
master copy), SDPA attention (FlashAttention kernels on GPUs), activation checkpointing. The
baseline is `transformers.Trainer` with bf16, gradient checkpointing and `adamw_torch_fused`.
Each configuration runs in its own process so peak memory is its own; a configuration that
does not fit is reported as OOM. Prints TGS (tokens/GPU/s), MFU, peak memory and the TGS ratio
to the transformers run of the same shape, table last.

    python benchmarks/gpu_throughput.py            # on a GPU: < 10 minutes on one H100-class GPU
    python benchmarks/gpu_throughput.py --dry-run  # tiny shape on CPU, to check it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

RUNNERS = ("transformers", "adamw", "adamw_compile", "lomo")
BASELINE = "transformers"
RUNS = [(shape, runner) for shape in ("1b", "7b") for runner in RUNNERS]
RESULT = "RESULT "


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


def parent(args: argparse.Namespace) -> None:
    runs = [("tiny", runner) for runner in RUNNERS] if args.dry_run else RUNS
    seq = 32 if args.dry_run else args.seq
    steps, warmup = (1, 1) if args.dry_run else (args.steps, 2)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, seq {seq}, batch 1, {steps} timed steps after {warmup} warm-up, "
          "activation checkpointing", flush=True)
    rows = []
    for shape, runner in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", shape, runner, "--seq", str(seq),
               "--steps", str(steps), "--warmup", str(warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
        if lines:
            rows.append((shape, runner, json.loads(lines[-1][len(RESULT):])))
        else:
            oom = "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr
            rows.append((shape, runner, "OOM" if oom else f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
        print(f"  done {shape} {runner}", flush=True)
    baseline = {shape: result["tgs"] for shape, runner, result in rows
                if runner == BASELINE and not isinstance(result, str)}
    print(f"{'shape':6} {'run':14} {'params':>7} {'TGS':>9} {'MFU':>6} {'peak mem':>9} {'TGS ratio':>10}")
    for shape, runner, result in rows:
        if isinstance(result, str):
            print(f"{shape:6} {runner:14} {result}")
            continue
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        memory = f"{result['peak_gib']:.1f} GiB" if result["peak_gib"] is not None else "n/a"
        ratio = f"{result['tgs'] / baseline[shape]:.2f}x" if shape in baseline else "n/a"
        print(f"{shape:6} {runner:14} {result['params_b']:6.2f}B {result['tgs']:9.1f} {mfu:>6} {memory:>9} "
              f"{ratio:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shape on CPU, 1 step")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "RUNNER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(child(*args.child, args.seq, args.steps, args.warmup)), flush=True)
    else:
        parent(args)


if __name__ == "__main__":
    main()
