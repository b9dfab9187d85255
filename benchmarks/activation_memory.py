"""Activation memory by checkpointing mode: collie's `checkpointing: none | full | selective`
against transformers without and with its gradient checkpointing, same model, data and steps.

100m LLaMA shape (hidden 640, 12 layers), fp32, AdamW, batch 1, seq 1024, 3 steps on random
tokens. Each configuration runs in its own process and reports its peak resident set size
(weights, gradients, AdamW state, activations, interpreter) and its step time; the activations
are what differ. Ratios are to transformers without checkpointing.

    OMP_NUM_THREADS=2 python benchmarks/activation_memory.py [--shape 100m] [--seq 1024] [--steps 3]
    python benchmarks/activation_memory.py --dry-run      # tiny shape, seq 64, 1 step
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
    train_transformers_adamw,
)

BASELINE = "transformers_none"
# name -> (library, checkpointing)
RUNS = {BASELINE: ("transformers", "none"), "transformers_full": ("transformers", "full"),
        "collie_none": ("collie", "none"), "collie_full": ("collie", "full"),
        "collie_selective": ("collie", "selective")}


def child(name: str, args: argparse.Namespace) -> None:
    start_anon_sampling()
    library, mode = RUNS[name]
    if library == "transformers":
        times = train_transformers_adamw(args.shape, args.seq, args.steps, checkpointing=mode == "full")
    else:
        times = train_collie(build_collie_model(shape_model_config(args.shape), torch.float32), "adamw", args.seq,
                             args.steps, checkpointing=mode)
    # The first step includes one-off costs (allocations, first-touch): the time is the others'.
    report(step_s=sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="100m")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, seq 64, 1 step")
    parser.add_argument("--run", choices=list(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.seq, args.steps = "tiny", 64, 1
    if args.run:
        child(args.run, args)
        return
    child_args = ["--shape", args.shape, "--seq", str(args.seq), "--steps", str(args.steps)]
    print(f"shape {args.shape}, seq {args.seq}, batch 1, {args.steps} step(s), AdamW fp32, device {device().type}, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    print(f"{'run':<20}{'peak RSS':>10}{'ratio':>9}{'s/step':>9}", flush=True)
    base = None
    for name in RUNS:  # the baseline first
        result = run_child(os.path.abspath(__file__), name, child_args)
        base = result["peak_rss_gib"] if name == BASELINE else base
        print(f"{name:<20}{result['peak_rss_gib']:>6.2f} GiB{result['peak_rss_gib'] / base:>8.2f}x"
              f"{result['step_s']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
