"""Full-parameter fine-tuning memory: collie (AdamW, LOMO, AdaLomo; fp32 and bf16 storage)
vs transformers' LlamaForCausalLM with AdamW, and vs the LOMO authors' `lomo-optim` package
(Lomo, AdaLomo on transformers, fp32; its `.cuda()` calls are shimmed on CPU, in its own
process only) with collie/lomo-optim ratios.

~1B LLaMA shape (`1b` in collie/models/shapes.py: hidden 2048, 16 layers, 16 heads, MLP 5632,
vocab 32000), seq 512, batch 1, activation checkpointing, 3 optimizer steps on random tokens.
Each configuration runs in its own process and reports the OS's peak resident set size
(ru_maxrss), which counts everything the run held at its worst moment: weights, gradients,
optimizer state, activations, the interpreter and libraries. On CUDA the peak allocated GPU
memory is shown too. Prints one row per run with its ratio to the transformers run, then
whether the goals (LOMO <= 0.30x, AdaLomo <= 0.35x of transformers AdamW) are met; the goal
uses the bf16-storage run of each optimizer (LOMO's intended setting) when it was run.

    OMP_NUM_THREADS=2 python benchmarks/memory.py [--shape 1b] [--seq 512] [--steps 3] [--only NAME,...]
    python benchmarks/memory.py --dry-run     # tiny shape, seq 32, 1 step: checks the plumbing

`--from-disk DIR` measures the user's path instead: the HF checkpoint is written first (what
`collie init-model` writes, fp32 or bf16, kept in DIR), then each collie run is `collie train`
loading it, and transformers (under AdamW and under lomo-optim) loads it with `from_pretrained`.
Those rows add the peak anonymous memory (sampled; no file pages) and the `mem_run_peak_gib`
collie itself reported.

bf16 runs store parameters in bf16 with no fp32 copy; on CPU each layer computes in fp32
(`collie.distributed.precision.apply_compute_dtype`), on CUDA natively in bf16.
"""

from __future__ import annotations

import argparse
import os

import torch
from _rss import (
    LOMO_LR,
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
    train_transformers_adamw_from,
    train_transformers_lomo_optim,
    write_checkpoint,
)

BASELINE = "transformers_adamw"
# name -> (collie optimizer, storage dtype); None marks the transformers baseline.
RUNS: dict[str, tuple[str, torch.dtype] | None] = {
    BASELINE: None,
    "collie_adamw": ("adamw", torch.float32),
    "collie_lomo": ("lomo", torch.float32),
    "collie_adalomo": ("adalomo", torch.float32),
    "collie_lomo_bf16": ("lomo", torch.bfloat16),
    "collie_adalomo_bf16": ("adalomo", torch.bfloat16),
}
# The LOMO authors' package on transformers (fp32), and the collie run each is compared with.
AUTHORS = {"lomo_optim_lomo": ("Lomo", "collie_lomo"), "lomo_optim_adalomo": ("AdaLomo", "collie_adalomo")}
AUTHORS_GOAL = 0.80  # collie / lomo-optim peak RSS (memory round 3)
LOSS_GOAL = 1e-4  # collie's and lomo-optim's loss curves, step by step
# goal name -> (max ratio, runs judged, preferred first)
GOALS = {"LOMO": (0.30, ("collie_lomo_bf16", "collie_lomo")),
         "AdaLomo": (0.35, ("collie_adalomo_bf16", "collie_adalomo"))}


def collie_run(name: str, shape: str, seq: int, steps: int) -> list[float]:
    optimizer, dtype = RUNS[name]
    model = build_collie_model(shape_model_config(shape), dtype)
    return train_collie(model, optimizer, seq, steps, lr=LOMO_LR if optimizer in ("lomo", "adalomo") else None)


def child(name: str, args: argparse.Namespace) -> None:
    start_anon_sampling()
    extra = {}
    if name in AUTHORS:
        source = checkpoint_dir(args.from_disk, args.shape, torch.float32) if args.from_disk else None
        times = train_transformers_lomo_optim(args.shape, args.seq, args.steps, AUTHORS[name][0], source)
    elif args.from_disk and RUNS[name] is None:
        times = train_transformers_adamw_from(checkpoint_dir(args.from_disk, args.shape, torch.float32), args.seq,
                                              args.steps)
    elif args.from_disk:
        optimizer, dtype = RUNS[name]
        result = train_collie_from_disk(checkpoint_dir(args.from_disk, args.shape, dtype), optimizer, args.seq,
                                        args.steps, dtype)
        times, extra = result["times"], {"collie_mem_gib": result["collie_mem_gib"]}
    elif RUNS[name] is None:
        times = train_transformers_adamw(args.shape, args.seq, args.steps)
    else:
        times = collie_run(name, args.shape, args.seq, args.steps)
    report(step_s=sum(times) / len(times), **extra)


def goal_line(ratios: dict[str, float]) -> str:
    parts = []
    for goal, (limit, candidates) in GOALS.items():
        run = next((r for r in candidates if r in ratios), None)
        if run is None:
            parts.append(f"{goal} <= {limit:.2f}x: not measured")
        else:
            verdict = "met" if ratios[run] <= limit else "not met"
            parts.append(f"{goal} <= {limit:.2f}x: {verdict} ({run} {ratios[run]:.2f}x)")
    return "goals: " + "; ".join(parts)


def parent(args: argparse.Namespace) -> None:
    choices = [*RUNS, *AUTHORS]
    names = args.only.split(",") if args.only else [*RUNS, *AUTHORS]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    if BASELINE in names:  # the baseline first, so every later row has its ratio
        names.remove(BASELINE)
        names.insert(0, BASELINE)
    script = os.path.abspath(__file__)
    child_args = ["--shape", args.shape, "--seq", str(args.seq), "--steps", str(args.steps)]
    if args.from_disk:
        for dtype in {torch.float32} | {RUNS[name][1] for name in names if RUNS.get(name) is not None}:
            write_checkpoint(args.from_disk, args.shape, dtype)
        child_args += ["--from-disk", args.from_disk]
    source = f"loaded from {args.from_disk} by `collie train`" if args.from_disk else "built in-process"
    print(f"shape {args.shape} ({source}), seq {args.seq}, batch 1, {args.steps} step(s), activation checkpointing, "
          f"device {device().type}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}", flush=True)
    print(f"{'run':<22}{'peak RSS':>10}{'ratio':>9}{'s/step':>9}{'peak anon':>12}" +
          (f"{'collie mem':>13}" if args.from_disk else "") +
          (f"{'GPU peak':>11}" if device().type == "cuda" else ""), flush=True)
    base: float | None = None
    ratios: dict[str, float] = {}
    peaks: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    for name in names:
        result = run_child(script, name, child_args)
        rss = peaks[name] = result["peak_rss_gib"]
        losses[name] = result.get("losses", [])
        if name == BASELINE:
            base = rss
        ratio = rss / base if base else None
        if ratio is not None:
            ratios[name] = ratio
        cells = f"{name:<22}{rss:>6.2f} GiB{(f'{ratio:.2f}x' if ratio is not None else '-'):>9}" \
                f"{result['step_s']:>9.2f}{result['peak_anon_gib']:>8.2f} GiB"
        if args.from_disk:
            collie_mem = result.get("collie_mem_gib")
            cells += f"{collie_mem:>9.2f} GiB" if collie_mem is not None else f"{'-':>13}"
        if "cuda_peak_gib" in result:
            cells += f"{result['cuda_peak_gib']:>7.2f} GiB"
        print(cells, flush=True)
    print(goal_line(ratios), flush=True)
    for authors, (_, ours) in AUTHORS.items():
        if authors in peaks and ours in peaks:
            ratio = peaks[ours] / peaks[authors]
            verdict = "met" if ratio <= AUTHORS_GOAL else "not met"
            print(f"{ours} / {authors}: {ratio:.3f}x (goal <= {AUTHORS_GOAL:.2f}x: {verdict})", flush=True)
            print(loss_line(ours, losses[ours], authors, losses[authors]), flush=True)


def loss_line(ours: str, our_losses: list[float], authors: str, their_losses: list[float]) -> str:
    """How far apart the two packages' loss curves are (same weights, tokens and update rule)."""
    gap = max(abs(a - b) for a, b in zip(our_losses, their_losses, strict=True))
    verdict = "met" if gap <= LOSS_GOAL else "not met"
    curve = ", ".join(f"{a:.6f}/{b:.6f}" for a, b in zip(our_losses, their_losses))
    return f"{ours} vs {authors} losses by step ({curve}): max |diff| {gap:.1e} (goal <= {LOSS_GOAL:g}: {verdict})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shape, seq 32, 1 step")
    parser.add_argument("--from-disk", metavar="DIR", default="",
                        help="write the HF checkpoint to DIR, then train by loading it as a user does")
    parser.add_argument("--run", choices=[*RUNS, *AUTHORS], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.seq, args.steps = "tiny", 32, 1
    if args.run:
        child(args.run, args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
