"""LoRA fine-tuning memory: collie's LoRA (fp32 base, and a bf16 base with fp32 adapters) vs
transformers + peft LoRA, same rank and target modules, AdamW, activation checkpointing.

~1B LLaMA shape (`1b`: hidden 2048, 16 layers, MLP 5632, vocab 32000), seq 512, batch 1,
3 optimizer steps on random tokens. Each configuration runs in its own process and reports
its peak resident set size (ru_maxrss: weights, adapters, their AdamW state, activations, the
interpreter and libraries), plus its ratio to the peft run. Goals: collie LoRA <= 1.0x peft's
peak, and with bf16 base storage <= 0.6x.

    OMP_NUM_THREADS=2 python benchmarks/lora_memory.py [--shape 1b] [--seq 512] [--steps 3] [--only NAME,...]
    python benchmarks/lora_memory.py --dry-run      # tiny shape, seq 32, 1 step
    python benchmarks/lora_memory.py --shape 7b --seq 256 --steps 1 --only collie_lora_bf16   # 7B on 24 GB
"""

from __future__ import annotations

import argparse
import os

import torch
from _rss import (
    build_collie_model,
    device,
    report,
    run_child,
    shape_model_config,
    start_anon_sampling,
    train_collie,
    train_transformers_peft_lora,
)

BASELINE = "peft_lora"
LORA = {"type": "lora", "r": 16, "alpha": 32.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# name -> collie's base storage dtype; None marks the transformers + peft baseline.
RUNS: dict[str, torch.dtype | None] = {BASELINE: None, "collie_lora": torch.float32,
                                       "collie_lora_bf16": torch.bfloat16}
GOALS = {"collie_lora": 1.0, "collie_lora_bf16": 0.6}


def child(name: str, args: argparse.Namespace) -> None:
    start_anon_sampling()
    if RUNS[name] is None:
        times = train_transformers_peft_lora(args.shape, args.seq, args.steps, LORA)
    else:
        model = build_collie_model(shape_model_config(args.shape), RUNS[name])
        times = train_collie(model, "adamw", args.seq, args.steps, lora=LORA)
    # The first step includes one-off costs (allocations, first-touch): the time is the others'.
    report(step_s=sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0])


def goal_line(ratios: dict[str, float]) -> str:
    parts = []
    for run, limit in GOALS.items():
        if run not in ratios:
            parts.append(f"{run} <= {limit:.2f}x: not measured")
        else:
            parts.append(f"{run} <= {limit:.2f}x: {'met' if ratios[run] <= limit else 'not met'} "
                         f"({ratios[run]:.2f}x)")
    return "goals: " + "; ".join(parts)


def parent(args: argparse.Namespace) -> None:
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")
    names.sort(key=lambda n: n != BASELINE)  # the baseline first, so later rows have their ratio
    child_args = ["--shape", args.shape, "--seq", str(args.seq), "--steps", str(args.steps)]
    print(f"shape {args.shape}, seq {args.seq}, batch 1, {args.steps} step(s), LoRA r={LORA['r']} on "
          f"{','.join(LORA['target_modules'])}, AdamW, activation checkpointing, device {device().type}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    print(f"{'run':<20}{'peak RSS':>10}{'ratio':>9}{'s/step':>9}{'peak anon':>12}", flush=True)
    base, ratios = None, {}
    for name in names:
        result = run_child(os.path.abspath(__file__), name, child_args)
        rss = result["peak_rss_gib"]
        base = rss if name == BASELINE else base
        if base is not None:
            ratios[name] = rss / base
        ratio = f"{ratios[name]:.2f}x" if name in ratios else "-"
        print(f"{name:<20}{rss:>6.2f} GiB{ratio:>9}{result['step_s']:>9.2f}{result['peak_anon_gib']:>8.2f} GiB",
              flush=True)
    print(goal_line(ratios), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, seq 32, 1 step")
    parser.add_argument("--run", choices=list(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.seq, args.steps = "tiny", 32, 1
    if args.run:
        child(args.run, args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
