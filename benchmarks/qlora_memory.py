"""QLoRA on a laptop: one step of a LLaMA whose bf16 checkpoint is on disk, base in NF4, LoRA
r=16 on every linear layer of the blocks, AdamW on the adapters, activation checkpointing.
Peak resident memory (the OS's, loading included) of `collie train` against transformers +
peft + bitsandbytes loading the same checkpoint with `BitsAndBytesConfig`, each in its own
process. Goals: collie <= 6.0 GiB at 7B, and <= 0.8x the baseline.

The baseline is the lean recipe: non-quantized weights kept in bf16 (no
`prepare_model_for_kbit_training`, which would widen the embedding and head to fp32),
`enable_input_require_grads()` and `gradient_checkpointing_enable()`, fp32 compute in the 4-bit
matmuls (bf16 matmuls are ~60x slower on CPUs).

    OMP_NUM_THREADS=2 python benchmarks/qlora_memory.py --checkpoints /tmp/bench [--shape 7b] [--seq 256]
    python benchmarks/qlora_memory.py --dry-run      # tiny shape, seq 32: checks the plumbing
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from _rss import (
    report,
    run_child,
    start_anon_sampling,
    train_collie_from_disk,
    train_peft_lora,
    write_checkpoint,
)

OURS, BASELINE = "collie_qlora", "transformers_peft_bnb"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"type": "lora", "r": 16, "alpha": 32.0, "target_modules": TARGETS}
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
GOAL_GIB, GOAL_RATIO = 6.0, 0.8


def train_baseline(model_dir: str, seq: int) -> float:
    """transformers + peft + bitsandbytes, one step of the baseline loop; returns its time."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, dtype=torch.bfloat16,
                                                 device_map="cpu")
    return train_peft_lora(model, seq, 1, LORA)[0]


def child(name: str, args: argparse.Namespace) -> None:
    start_anon_sampling()
    if name == BASELINE:
        report(step_s=train_baseline(args.model_dir, args.seq))
        return
    result = train_collie_from_disk(args.model_dir, "adamw", args.seq, 1, torch.bfloat16,
                                    extra={"peft": LORA, "quantization_config": NF4})
    report(step_s=result["times"][0], collie_mem_gib=result["collie_mem_gib"])


def parent(args: argparse.Namespace) -> None:
    model_dir = write_checkpoint(args.checkpoints, args.shape, torch.bfloat16)
    print(f"shape {args.shape} (bf16 checkpoint {model_dir}), seq {args.seq}, batch 1, one step, NF4 base, "
          f"LoRA r={LORA['r']} on {','.join(TARGETS)}, AdamW, activation checkpointing, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    script = os.path.abspath(__file__)
    child_args = ["--model-dir", model_dir, "--seq", str(args.seq)]
    results = {name: run_child(script, name, child_args) for name in (OURS, BASELINE)}
    base = results[BASELINE]["peak_rss_gib"]
    print(f"{'run':<24}{'peak RSS':>12}{'ratio':>9}{'s/step':>9}{'peak anon':>12}")
    for name, result in results.items():
        print(f"{name:<24}{result['peak_rss_gib']:>8.2f} GiB{result['peak_rss_gib'] / base:>8.3f}x"
              f"{result['step_s']:>9.1f}{result['peak_anon_gib']:>8.2f} GiB")
    ours = results[OURS]["peak_rss_gib"]
    print(f"collie reported mem_run_peak_gib {results[OURS]['collie_mem_gib']:.2f} GiB")
    verdict = "met" if ours <= GOAL_GIB and ours / base <= GOAL_RATIO else "not met"
    print(f"goal: peak RSS <= {GOAL_GIB} GiB and <= {GOAL_RATIO}x the baseline: {verdict} "
          f"({ours:.2f} GiB, {ours / base:.3f}x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="7b")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--checkpoints", default="", help="where the bf16 checkpoint is written (kept for reruns)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, seq 32, a temporary checkpoint")
    parser.add_argument("--run", choices=[OURS, BASELINE], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args.run, args)
    elif args.dry_run:
        args.shape, args.seq = "tiny", 32
        with tempfile.TemporaryDirectory() as args.checkpoints:
            parent(args)
    elif not args.checkpoints:
        parser.error("--checkpoints DIR: where to write the bf16 checkpoint (13.5 GB at 7B)")
    else:
        parent(args)


if __name__ == "__main__":
    main()
