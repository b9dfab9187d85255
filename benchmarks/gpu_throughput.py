"""Single-GPU throughput and memory: 1B and 7B LLaMA shapes (random init), AdamW vs LOMO.

bf16 (AdamW: fp32 master weights + bf16 autocast; LOMO: bf16 storage, no master copy),
SDPA attention (FlashAttention kernels on GPUs), activation checkpointing, collie's Trainer.
Each configuration runs in its own process so peak memory is its own; a configuration that
does not fit is reported as OOM. Prints TGS (tokens/GPU/s), MFU and peak memory, table last.

    python benchmarks/gpu_throughput.py            # on a GPU: < 8 minutes on one H100-class GPU
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

RUNS = [("1b", "adamw"), ("1b", "lomo"), ("7b", "adamw"), ("7b", "lomo")]
RESULT = "RESULT "


def child(shape: str, optimizer: str, seq: int, steps: int, warmup: int) -> dict:
    from transformers import AutoTokenizer

    from collie import CollieConfig, LlamaForCausalLM
    from collie.data import CollieDatasetForTraining
    from collie.init_model import bundled_tokenizer_path, shape_config
    from collie.models.registry import spec_for
    from collie.monitors.monitors import peak_flops
    from collie.trainer import Callback, Trainer

    cuda = torch.cuda.is_available()
    model_config = shape_config(shape, AutoTokenizer.from_pretrained(bundled_tokenizer_path()))
    lomo = optimizer == "lomo"
    # LOMO keeps bf16 weights only; AdamW keeps fp32 master weights and computes under autocast.
    dtype = torch.bfloat16 if lomo and cuda else torch.float32
    config = CollieConfig(model_config=model_config, train_micro_batch_size=1, max_steps=warmup + steps,
                          logging=[], checkpointing=True, mixed_precision="bf16" if cuda and not lomo else "no")
    config.data.max_length = seq
    config.optimizer.name = optimizer
    config.optimizer.lr = 1e-5
    model = LlamaForCausalLM.from_config(model_config, seed=0, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    records = [{"tokens": torch.randint(0, model_config.vocab_size, (seq,), generator=g).tolist()}
               for _ in range(warmup + steps)]

    class Timer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_begin(self, trainer, batch) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, loss) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[timer])
    trainer.train()
    step = statistics.median(timer.times[warmup:])
    tgs = seq / step
    peak = peak_flops(trainer.runtime.device, torch.bfloat16)  # both runs compute in bf16
    spec = spec_for(model_config)
    mfu = spec.flops_per_token(spec.dims(model_config), seq, params) * tgs / peak if peak else None
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"params_b": params / 1e9, "step_s": step, "tgs": tgs, "mfu": mfu, "peak_gib": memory}


def parent(args: argparse.Namespace) -> None:
    runs = [("tiny", "adamw"), ("tiny", "lomo")] if args.dry_run else RUNS
    seq = 32 if args.dry_run else args.seq
    steps, warmup = (1, 1) if args.dry_run else (args.steps, 2)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, seq {seq}, batch 1, {steps} timed steps after {warmup} warm-up, "
          "activation checkpointing", flush=True)
    rows = []
    for shape, optimizer in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", shape, optimizer, "--seq", str(seq),
               "--steps", str(steps), "--warmup", str(warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
        if lines:
            rows.append((shape, optimizer, json.loads(lines[-1][len(RESULT):])))
        else:
            oom = "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr
            rows.append((shape, optimizer, "OOM" if oom else f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
        print(f"  done {shape} {optimizer}", flush=True)
    print(f"{'shape':6} {'optimizer':9} {'params':>7} {'TGS':>9} {'MFU':>6} {'peak mem':>9}")
    for shape, optimizer, result in rows:
        if isinstance(result, str):
            print(f"{shape:6} {optimizer:9} {result}")
            continue
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        memory = f"{result['peak_gib']:.1f} GiB" if result["peak_gib"] is not None else "n/a"
        print(f"{shape:6} {optimizer:9} {result['params_b']:6.2f}B {result['tgs']:9.1f} {mfu:>6} {memory:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shape on CPU, 1 step")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("SHAPE", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT + json.dumps(child(*args.child, args.seq, args.steps, args.warmup)), flush=True)
    else:
        parent(args)


if __name__ == "__main__":
    main()
