"""One LOMO (or AdaLomo) step on a 7B LLaMA (`7b` in collie/models/shapes.py: hidden 4096, 32
layers, MLP 11008, vocab 32000): peak resident memory and step time. Goal: peak RSS < 20 GB.

bf16 parameter storage with no fp32 copy, activation checkpointing, seq 256, batch 1, random
tokens, collie's Trainer with optimizer lomo. On CPU each layer computes in fp32 with its
parameters upcast only for its own forward (`apply_compute_dtype`); on CUDA compute is
natively bf16. The model is never materialised in fp32 (that alone would be 27 GB).

The baseline, transformers with AdamW and fp32 parameters, is measured in the same run only
when it could fit: it needs 16 bytes per parameter (weights, gradients, two moments) before
activations, ~108 GB for this shape, so on a 24 GiB machine it is printed as an arithmetic
estimate, clearly labelled as such (the dry run's tiny shape does measure it).

    OMP_NUM_THREADS=2 python benchmarks/seven_b.py [--seq 256] [--from-disk DIR] [--optimizer adalomo]
    python benchmarks/seven_b.py --dry-run     # tiny shape, seq 32: checks the plumbing

`--from-disk DIR` is the user's path: the bf16 HF checkpoint is written to DIR first (as
`collie init-model --shape 7b --dtype bfloat16` does), then `collie train` loads it and
trains; the row adds the peak anonymous memory and the `mem_run_peak_gib` collie reported.
"""

from __future__ import annotations

import argparse
import os

import torch
from _rss import (
    available_bytes,
    build_collie_model,
    checkpoint_dir,
    device,
    report,
    run_child,
    shape_model_config,
    start_anon_sampling,
    train_collie,
    train_collie_from_disk,
    train_transformers_adamw,
    write_checkpoint,
)

RUNS = {"lomo": "collie_lomo_bf16", "adalomo": "collie_adalomo_bf16"}
BASELINE = "transformers_adamw"
GOAL_BYTES = 20e9
WEIGHTS_GOAL = 1.10  # peak within 10% of the bf16 weights
WEIGHT_BYTES_PER_PARAM = 2
ADAMW_BYTES_PER_PARAM = 16  # fp32 weight + gradient + exp_avg + exp_avg_sq
# The baseline is attempted only with this much headroom over its estimate (activations,
# interpreter): a run that cannot fit is not started, rather than left to the OOM killer.
HEADROOM = 1.5


def child(name: str, args: argparse.Namespace) -> None:
    start_anon_sampling()
    if name == BASELINE:
        report(step_s=train_transformers_adamw(args.shape, args.seq, 1)[0])
        return
    with torch.device("meta"):
        params = sum(p.numel() for p in build_collie_model(shape_model_config(args.shape), torch.bfloat16,
                                                           materialize=False).parameters())
    if args.from_disk:
        result = train_collie_from_disk(checkpoint_dir(args.from_disk, args.shape, torch.bfloat16), args.optimizer,
                                        args.seq, 1, torch.bfloat16)
        report(step_s=result["times"][0], params=params, collie_mem_gib=result["collie_mem_gib"])
        return
    times = train_collie(build_collie_model(shape_model_config(args.shape), torch.bfloat16), args.optimizer, args.seq, 1)
    report(step_s=times[0], params=params)


def parent(args: argparse.Namespace) -> None:
    print(f"shape {args.shape}, seq {args.seq}, batch 1, one optimizer step, activation checkpointing, "
          f"device {device().type}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    script = os.path.abspath(__file__)
    child_args = ["--shape", args.shape, "--seq", str(args.seq), "--optimizer", args.optimizer]
    run = RUNS[args.optimizer]
    if args.from_disk:
        write_checkpoint(args.from_disk, args.shape, torch.bfloat16)
        print(f"collie loads the bf16 checkpoint in {args.from_disk} with `collie train`", flush=True)
    ours = run_child(script, run, [*child_args, "--from-disk", args.from_disk] if args.from_disk else child_args)
    estimate = ADAMW_BYTES_PER_PARAM * ours["params"]
    arithmetic = (f"arithmetic: {ADAMW_BYTES_PER_PARAM} B/param x {ours['params'] / 1e6:,.0f}M params = "
                  f"{estimate / 2**30:.2f} GiB before activations")
    available = available_bytes()
    if estimate * HEADROOM < available:
        base = run_child(script, BASELINE, child_args)
        base_gib, base_label, base_step = base["peak_rss_gib"], BASELINE, f"{base['step_s']:.1f}"
        note = f"measured ({arithmetic})"
    else:
        base_gib, base_label, base_step = estimate / 2**30, "adamw_fp32 (ESTIMATE, not run)", "-"
        note = (f"{arithmetic}; not run: cannot fit in the {available / 2**30:.1f} GiB this machine has "
                "available")
    print(f"{'run':<34}{'peak RSS':>12}{'ratio':>9}{'s/step':>9}")
    print(f"{run + ' (bf16 storage)':<34}{ours['peak_rss_gib']:>8.2f} GiB{ours['peak_rss_gib'] / base_gib:>8.3f}x"
          f"{ours['step_s']:>9.1f}", flush=True)
    print(f"{base_label:<34}{base_gib:>8.2f} GiB{1.0:>8.3f}x{base_step:>9}   {note}")
    print(f"peak anonymous memory ({run}): {ours['peak_anon_gib']:.2f} GiB" +
          (f"; collie reported mem_run_peak_gib {ours['collie_mem_gib']:.2f} GiB" if "collie_mem_gib" in ours else ""))
    if "cuda_peak_gib" in ours:
        print(f"GPU peak allocated ({run}): {ours['cuda_peak_gib']:.2f} GiB")
    weights_gib = ours["params"] * WEIGHT_BYTES_PER_PARAM / 2**30
    if "ready_rss_gib" in ours:  # measured in-process only (not inside `collie train`)
        print(breakdown_line(ours, weights_gib))
    print(goal_line(ours["peak_rss_gib"]))
    print(weights_goal_line(ours["peak_rss_gib"], weights_gib), flush=True)


def breakdown_line(result: dict, weights_gib: float) -> str:
    """Where the peak goes, from resident memory measured at two moments of the run."""
    imported, ready, peak = result["imported_rss_gib"], result["ready_rss_gib"], result["peak_rss_gib"]
    return (f"breakdown (resident memory): libraries {imported:.2f} GiB, + model and trainer "
            f"{ready - imported:.2f} GiB (bf16 weights {weights_gib:.2f} GiB), + the step {peak - ready:.2f} GiB")


def goal_line(peak_rss_gib: float) -> str:
    rss_bytes = peak_rss_gib * 2**30
    verdict = "met" if rss_bytes < GOAL_BYTES else "not met"
    return f"goal: peak RSS < 20 GB: {verdict} ({rss_bytes / 1e9:.2f} GB)"


def weights_goal_line(peak_rss_gib: float, weights_gib: float) -> str:
    ratio = peak_rss_gib / weights_gib
    verdict = "met" if ratio <= WEIGHTS_GOAL else "not met"
    return f"goal: peak RSS <= {WEIGHTS_GOAL:.2f}x the bf16 weights ({weights_gib:.2f} GiB): {verdict} ({ratio:.3f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="7b", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, seq 32")
    parser.add_argument("--from-disk", metavar="DIR", default="",
                        help="write the bf16 HF checkpoint to DIR, then train by loading it as a user does")
    parser.add_argument("--optimizer", choices=list(RUNS), default="lomo")
    parser.add_argument("--run", choices=[*RUNS.values(), BASELINE], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.seq = "tiny", 32
    if args.run:
        child(args.run, args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
