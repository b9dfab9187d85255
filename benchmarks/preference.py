"""Preference training (DPO) against trl's DPOTrainer: pairs per second, 1B memory, a 7B step.

Every run trains on the same synthetic pair records ({"prompt", "chosen", "rejected"} text,
written to a .jsonl once) from the same HF checkpoint (written once, as `collie init-model`
writes it; both sides load it from disk), DPO with beta 0.1, in its own process that prints
one RESULT line. trl runs as its users run it: `DPOTrainer(model_dir, ...)` loads the policy
and, unless `precompute_ref_log_probs=True`, a second copy as the reference model. collie runs
with `preference.reference: precomputed`: one pass of the initial model over the pairs before
step 1, then only the policy in memory. Three parts (`--parts`, default all):

- pairs_per_s: 20m shape with the GPT-2 tokenizer (vocab 50304), 64 pairs (prompt ~60 tokens,
  completions 30-60), max_length 256, 4 pairs per step, AdamW lr 1e-5, fp32, no activation
  checkpointing on either side, the records in file order. Pairs/s over the steps after one
  warm-up step: the training steps only (the reference pass, loading and set-up are timed
  apart). collie's Trainer in-process vs trl, and trl with precompute_ref_log_probs=True.
  Goal: collie/trl >= 1.0x. Pairs per CPU-second of the process are printed too: a step that
  waited for a core other work held shows in its wall time only.
- memory_1b: 1b shape, fp32, pairs filling ~512 tokens, 1 pair per step, 2 steps, activation
  checkpointing. `collie train` on a YAML (LOMO) vs trl + AdamW (reference model loaded), and
  trl + AdamW with precompute_ref_log_probs=True. OS peak RSS (ru_maxrss) per process.
  Goal: collie / trl <= 0.30x.
- seven_b: 7b shape, bf16 checkpoint, seq 256, 1 pair, one LOMO step with `collie train`,
  activation checkpointing. Peak RSS vs the bf16 weights. Goal: <= 1.15x the weights.

Each child runs under a watchdog that kills it (and reports the size it had reached) when the
machine's MemAvailable falls below 2 GiB: trl + AdamW on a 1B fp32 model needs ~20 GiB.

    OMP_NUM_THREADS=2 python benchmarks/preference.py [--parts pairs_per_s,memory_1b] [--dir /tmp/bench-pref]
        [--rounds 3]            # pairs_per_s: the three runs 3 times in turn, median ratios
    OMP_NUM_THREADS=2 python benchmarks/preference.py --parts seven_b --dir /tmp/bench7b
    python benchmarks/preference.py --dry-run     # tiny shapes, a few short pairs: checks the plumbing
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, replace

import torch
import yaml
from _rss import (
    build_collie_model,
    current_rss_gib,
    record,
    report,
    run_child_watched,
    shape_model_config,
    start_anon_sampling,
    time_calls,
)

GPT2_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "assets",
                              "gpt2-tokenizer")
BETA = 0.1
LR = 1e-5
WARMUP = 1  # pairs_per_s: steps run before the timed ones
MEMORY_FLOOR_GIB = 2.0  # the watchdog kills a child when MemAvailable falls below this
THROUGHPUT_GOAL = 1.0
MEMORY_GOAL = 0.30
WEIGHTS_GOAL = 1.15


@dataclass(frozen=True)
class Workload:
    shape: str
    dtype: torch.dtype
    gpt2: bool  # the GPT-2 tokenizer; otherwise collie's bundled one (the checkpoint's vocab 32000)
    max_length: int
    prompt_tokens: int
    completion_tokens: tuple[int, int]  # each completion's length is drawn from this range
    pairs: int
    batch: int  # pairs per step
    steps: int  # pairs_per_s: timed steps, after WARMUP more
    checkpointing: bool


WORKLOADS = {
    "pairs_per_s": Workload("20m", torch.float32, True, 256, 60, (30, 60), 64, 4, 10, False),
    "memory_1b": Workload("1b", torch.float32, False, 512, 200, (300, 311), 2, 1, 2, True),
    "seven_b": Workload("7b", torch.bfloat16, False, 256, 100, (140, 155), 1, 1, 1, True),
}
DRY_RUN = {
    "pairs_per_s": Workload("tiny", torch.float32, True, 64, 12, (6, 12), 8, 2, 2, False),
    "memory_1b": Workload("tiny", torch.float32, False, 64, 20, (30, 43), 2, 1, 2, True),
    "seven_b": Workload("tiny", torch.bfloat16, False, 64, 20, (30, 43), 1, 1, 1, True),
}
# run name -> (part, what runs it, trl's precompute_ref_log_probs); the first run of a part is
# the one the others are compared with (seven_b: the weights).
RUNS = {
    "trl_dpo": ("pairs_per_s", "trl", False),
    "trl_dpo_precomputed": ("pairs_per_s", "trl", True),
    "collie_dpo": ("pairs_per_s", "collie", None),
    "trl_adamw_1b": ("memory_1b", "trl", False),
    "trl_adamw_precomputed_1b": ("memory_1b", "trl", True),
    "collie_lomo_1b": ("memory_1b", "collie_train", None),
    "collie_lomo_7b": ("seven_b", "collie_train", None),
}

WORDS = ("the model answer question because which better worse reason first second result simple clear short "
         "long right wrong good bad memory layer weight value token pair step data train check order small large "
         "number river mountain city garden window morning evening color paper music table letter story").split()


# -- the shared inputs ---------------------------------------------------------
def model_dir(root: str, work: Workload) -> str:
    return os.path.join(root, f"{work.shape}-{str(work.dtype).split('.')[-1]}" + ("-gpt2" if work.gpt2 else ""))


def data_path(root: str, part: str) -> str:
    return os.path.join(root, f"{part}.jsonl")


def write_inputs(root: str, part: str, work: Workload) -> None:
    """The HF checkpoint (kept when present: `collie init-model`'s streaming writer) and the pairs."""
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path, init_model

    path = model_dir(root, work)
    tokenizer_path = GPT2_TOKENIZER if work.gpt2 else bundled_tokenizer_path()
    if not os.path.isfile(os.path.join(path, "config.json")):
        init_model(work.shape, path, tokenizer_path=tokenizer_path, dtype=work.dtype)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    with open(data_path(root, part), "w") as f:
        for pair in pair_records(tokenizer, work):
            f.write(json.dumps(pair) + "\n")


def pair_records(tokenizer, work: Workload, seed: int = 0) -> list[dict]:
    """`work.pairs` text pairs: a prompt of `work.prompt_tokens` tokens and two different
    completions of a length drawn from `work.completion_tokens` (the tokenizer's count)."""
    rng = random.Random(seed)

    def text(tokens: int, start: str) -> str:
        words = [start]
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
            words.append(rng.choice(WORDS))
        return " ".join(words)

    pairs = []
    for i in range(work.pairs):
        prompt = text(work.prompt_tokens, f"Question {i}:") + "\nAnswer:"
        chosen = " " + text(rng.randint(*work.completion_tokens), "Yes,")
        rejected = " " + text(rng.randint(*work.completion_tokens), "No,")
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def read_pairs(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# -- the runs --------------------------------------------------------------
class StepTimer:
    """Each step's wall time, and the CPU time this process spent in it (all its threads: on a
    machine other work shares, what the step cost rather than how long it waited)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.losses: list[float] = []

    def begin(self) -> None:
        if not self.times:  # the first step: model, optimizer and data are ready
            record(ready_rss_gib=current_rss_gib())
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def end(self) -> None:
        self.times.append(time.perf_counter() - self.start)
        self.cpu_times.append(time.process_time() - self.cpu_start)

    def loss(self, value: float) -> None:
        self.losses.append(value)
        record(losses=list(self.losses))


def collie_in_process(work: Workload, model: str, data: str, steps: int) -> StepTimer:
    """collie's Trainer in this process on the checkpoint and pairs (AdamW, fp32)."""
    from collie import CollieConfig
    from collie.data import CollieDatasetForPreference
    from collie.models.base import CollieModel, load_tokenizer
    from collie.trainer import Callback, Trainer, reference_pass

    time_calls(reference_pass, "compute", "reference")
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="collie-pref-") as out:
        config = CollieConfig.load(None, [
            f"train_micro_batch_size={work.batch}", f"max_steps={steps}", "optimizer.name=adamw", f"optimizer.lr={LR}",
            "preference.loss=dpo", f"preference.beta={BETA}", "preference.reference=precomputed",
            f"data.max_length={work.max_length}", "data.shuffle=false", "param_dtype=float32",
            f"checkpointing={'full' if work.checkpointing else 'none'}", "logging=[]", f"output_dir={out}"])
        tokenizer = load_tokenizer(model)
        policy = CollieModel.from_pretrained(model, config=config)
        pairs = CollieDatasetForPreference(data, tokenizer, max_length=work.max_length)

        class Times(Callback):
            def on_train_batch_begin(self, trainer, batch) -> None:
                timer.begin()

            def on_train_batch_end(self, trainer, loss) -> None:
                timer.end()
                timer.loss(float(loss))

        Trainer(policy, config, train_dataset=pairs, tokenizer=tokenizer, callbacks=[Times()]).train()
    return timer


def collie_train(work: Workload, model: str, data: str) -> dict:
    """`collie train` on a YAML naming the checkpoint and the pairs, as a user runs it (LOMO,
    precomputed reference; the run's `final/` export included): step times and the
    `mem_run_peak_gib` collie itself wrote to metrics.csv."""
    from collie.cli import main
    from collie.trainer import reference_pass

    time_calls(reference_pass, "compute", "reference")
    with tempfile.TemporaryDirectory(prefix="collie-pref-") as out:
        config = os.path.join(out, "config.yaml")
        with open(config, "w") as f:
            yaml.safe_dump({"model": model, "output_dir": os.path.join(out, "run"), "max_steps": work.steps,
                            "train_micro_batch_size": work.batch, "checkpointing": work.checkpointing,
                            "logging": ["csv"], "param_dtype": str(work.dtype).split(".")[-1],
                            "optimizer": {"name": "lomo", "lr": LR},
                            "preference": {"loss": "dpo", "beta": BETA, "reference": "precomputed"},
                            "data": {"train_file": data, "max_length": work.max_length, "shuffle": False}}, f)
        if main(["train", config]) != 0:
            raise RuntimeError(f"collie train {config} failed")
        with open(os.path.join(out, "run", "metrics.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    record(losses=[float(row["loss"]) for row in rows if row.get("loss")])
    return {"times": [float(row["step_time_s"]) for row in rows], "collie_mem_gib": float(rows[-1]["mem_run_peak_gib"])}


def trl_run(work: Workload, model: str, data: str, steps: int, precompute: bool) -> StepTimer:
    """trl's DPOTrainer given the checkpoint's directory (it loads the policy, and the reference
    model unless `precompute`), fp32, AdamW, the records in file order."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    time_calls(DPOTrainer, "_precompute_ref_logps", "reference")
    timer = StepTimer()

    class Times(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timer.loss(float(logs["loss"]))

    with tempfile.TemporaryDirectory(prefix="trl-pref-") as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=work.batch, gradient_accumulation_steps=1,
                         learning_rate=LR, beta=BETA, max_length=work.max_length, max_steps=steps,
                         precompute_ref_log_probs=precompute, gradient_checkpointing=work.checkpointing,
                         bf16=False, optim="adamw_torch", train_sampling_strategy="sequential", logging_steps=1,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                         dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32})
        trainer = DPOTrainer(model, args=args, train_dataset=Dataset.from_list(read_pairs(data)),
                             processing_class=AutoTokenizer.from_pretrained(model), callbacks=[Times()])
        trainer.train()
    return timer


def child(name: str, args: argparse.Namespace) -> None:
    part, runner, precompute = RUNS[name]
    work = workloads(args)[part]
    model, data = model_dir(args.dir, work), data_path(args.dir, part)
    steps = work.steps + WARMUP if part == "pairs_per_s" else work.steps
    start_anon_sampling()
    extra, cpu_times = {}, []
    if runner in ("trl", "collie"):
        timer = trl_run(work, model, data, steps, precompute) if runner == "trl" else \
            collie_in_process(work, model, data, steps)
        times, cpu_times = timer.times, timer.cpu_times
    else:
        result = collie_train(work, model, data)
        times, extra = result["times"], {"collie_mem_gib": result["collie_mem_gib"]}
    timed = times[WARMUP:] if part == "pairs_per_s" else times
    if cpu_times:
        extra["pairs_per_cpu_s"] = work.batch * len(cpu_times[WARMUP:]) / sum(cpu_times[WARMUP:])
    report(step_times=times, pairs_per_s=work.batch * len(timed) / sum(timed), step_s=sum(timed) / len(timed),
           **extra)


# -- the parent --------------------------------------------------------------
def workloads(args: argparse.Namespace) -> dict[str, Workload]:
    chosen = DRY_RUN if args.dry_run else WORKLOADS
    if args.steps:
        chosen = {**chosen, "pairs_per_s": replace(chosen["pairs_per_s"], steps=args.steps)}
    return chosen


def run(script: str, name: str, args: argparse.Namespace) -> dict:
    child_args = ["--dir", args.dir] + (["--dry-run"] if args.dry_run else []) + \
        (["--steps", str(args.steps)] if args.steps else [])
    return run_child_watched(script, name, child_args, floor_gib=MEMORY_FLOOR_GIB)


def describe(work: Workload, part: str, root: str) -> str:
    return (f"{part}: shape {work.shape} ({str(work.dtype).split('.')[-1]}, {model_dir(root, work)}), "
            f"{'GPT-2' if work.gpt2 else 'bundled'} tokenizer, {work.pairs} pairs (prompt ~{work.prompt_tokens} "
            f"tokens, completions {work.completion_tokens[0]}-{work.completion_tokens[1]}), max_length "
            f"{work.max_length}, {work.batch} pair(s) per step, "
            f"{'activation checkpointing' if work.checkpointing else 'no activation checkpointing'}, DPO beta {BETA}, "
            f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")


def killed_line(name: str, result: dict) -> str:
    return (f"{name:<28}did not fit: killed at {result['killed_at_gib']:.2f} GiB "
            f"(MemAvailable {result['available_gib']:.2f} GiB)")


def pairs_per_s(script: str, args: argparse.Namespace, work: Workload) -> None:
    """The three runs, `args.rounds` times in turn (a shared machine's load comes and goes: each
    round's ratio compares runs made minutes apart), then the median ratios."""
    names = ("trl_dpo", "trl_dpo_precomputed", "collie_dpo")
    print(f"{'round':<6}{'run':<24}{'pairs/s':>9}{'ratio':>9}{'s/step':>9}{'pairs/CPU-s':>13}{'ratio':>9}"
          f"{'reference pass':>16}{'peak RSS':>12}  losses (first 3)", flush=True)
    ratios: dict[str, list[float]] = {base: [] for base in names[:2]}
    cpu_ratios: dict[str, list[float]] = {base: [] for base in names[:2]}
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(1, args.rounds + 1):
        results = {}
        for name in names:
            result = results[name] = run(script, name, args)
            if "killed_at_gib" in result:
                print(f"{round_:<6}{killed_line(name, result)}", flush=True)
                continue
            speeds[name].append(result["pairs_per_s"])
            base, cpu_base = results["trl_dpo"].get("pairs_per_s"), results["trl_dpo"].get("pairs_per_cpu_s")
            ratio = f"{result['pairs_per_s'] / base:.3f}x" if base else "-"
            cpu_ratio = f"{result['pairs_per_cpu_s'] / cpu_base:.3f}x" if cpu_base else "-"
            reference = f"{result['reference_s']:.2f} s" if "reference_s" in result else "- (ref model)"
            losses = ", ".join(f"{loss:.4f}" for loss in result.get("losses", [])[:3])
            print(f"{round_:<6}{name:<24}{result['pairs_per_s']:>9.3f}{ratio:>9}{result['step_s']:>9.3f}"
                  f"{result['pairs_per_cpu_s']:>13.3f}{cpu_ratio:>9}{reference:>16}{result['peak_rss_gib']:>8.2f} GiB  "
                  f"{losses}", flush=True)
        ours = results["collie_dpo"].get("pairs_per_s")
        for base in ratios:
            theirs = results[base].get("pairs_per_s")
            if ours and theirs:
                ratios[base].append(ours / theirs)
                cpu_ratios[base].append(results["collie_dpo"]["pairs_per_cpu_s"] / results[base]["pairs_per_cpu_s"])
    for name, values in speeds.items():
        if values:
            print(f"median pairs/s {name}: {statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")
    for base, values in ratios.items():
        if values:
            median = statistics.median(values)
            verdict = "met" if median >= THROUGHPUT_GOAL else "not met"
            goal = f" (goal >= {THROUGHPUT_GOAL:.1f}x: {verdict})" if base == "trl_dpo" else ""
            print(f"collie_dpo / {base}: median {median:.3f}x over {len(values)} round(s) "
                  f"({', '.join(f'{v:.3f}' for v in values)}){goal}; per CPU-second: median "
                  f"{statistics.median(cpu_ratios[base]):.3f}x ({', '.join(f'{v:.3f}' for v in cpu_ratios[base])})",
                  flush=True)


def memory_1b(script: str, args: argparse.Namespace, work: Workload) -> None:
    print(f"{'run':<28}{'peak RSS':>12}{'ratio':>9}{'s/step':>9}{'peak anon':>12}{'collie mem':>13}"
          f"{'reference pass':>16}", flush=True)
    results = {}
    for name in ("trl_adamw_1b", "trl_adamw_precomputed_1b", "collie_lomo_1b"):
        result = results[name] = run(script, name, args)
        if "killed_at_gib" in result:
            print(killed_line(name, result), flush=True)
            continue
        base = results["trl_adamw_1b"].get("peak_rss_gib")
        ratio = f"{result['peak_rss_gib'] / base:.3f}x" if base else "-"
        collie_mem = f"{result['collie_mem_gib']:.2f} GiB" if "collie_mem_gib" in result else "-"
        reference = f"{result['reference_s']:.1f} s" if "reference_s" in result else "-"
        print(f"{name:<28}{result['peak_rss_gib']:>8.2f} GiB{ratio:>9}{result['step_s']:>9.1f}"
              f"{result['peak_anon_gib']:>8.2f} GiB{collie_mem:>13}{reference:>16}", flush=True)
        print(f"  {phases_line(result)}", flush=True)
    ours = results["collie_lomo_1b"].get("peak_rss_gib")
    for base in ("trl_adamw_1b", "trl_adamw_precomputed_1b"):
        theirs = results[base].get("peak_rss_gib")
        if ours and theirs:
            verdict = "met" if ours / theirs <= MEMORY_GOAL else "not met"
            goal = f" (goal <= {MEMORY_GOAL:.2f}x: {verdict})" if base == "trl_adamw_1b" else ""
            print(f"collie_lomo_1b / {base}: {ours / theirs:.3f}x{goal}", flush=True)
        elif ours and "killed_at_gib" in results[base]:
            print(f"collie_lomo_1b / {base}: < {ours / results[base]['killed_at_gib']:.3f}x ({base} was killed at "
                  f"{results[base]['killed_at_gib']:.2f} GiB, short of its peak)", flush=True)


def seven_b(script: str, args: argparse.Namespace, work: Workload) -> None:
    with torch.device("meta"):
        params = sum(p.numel() for p in build_collie_model(shape_model_config(work.shape), work.dtype,
                                                           materialize=False).parameters())
    weights_gib = params * torch.finfo(work.dtype).bits / 8 / 2**30
    result = run(script, "collie_lomo_7b", args)
    if "killed_at_gib" in result:
        print(killed_line("collie_lomo_7b", result), flush=True)
        return
    ratio = result["peak_rss_gib"] / weights_gib
    print(f"collie_lomo_7b: peak RSS {result['peak_rss_gib']:.2f} GiB ({result['peak_rss_gib'] * 2**30 / 1e9:.1f} GB), "
          f"peak anon {result['peak_anon_gib']:.2f} GiB, collie mem {result['collie_mem_gib']:.2f} GiB, "
          f"step {result['step_s']:.1f} s, reference pass {result.get('reference_s', 0):.1f} s", flush=True)
    print(f"  {phases_line(result)}", flush=True)
    verdict = "met" if ratio <= WEIGHTS_GOAL else "not met"
    print(f"goal: peak RSS <= {WEIGHTS_GOAL:.2f}x the bf16 weights ({params / 1e9:.2f}B params, {weights_gib:.2f} GiB): "
          f"{verdict} ({ratio:.3f}x)", flush=True)


def phases_line(result: dict) -> str:
    """Where the peak falls: resident memory once libraries are imported, when the reference
    pass began, the OS peak when it ended, and the run's peak."""
    parts = [f"imported {result['imported_rss_gib']:.2f} GiB"]
    if "reference_start_rss_gib" in result:
        parts.append(f"reference pass began at {result['reference_start_rss_gib']:.2f} GiB, peak by its end "
                     f"{result['reference_end_peak_rss_gib']:.2f} GiB")
    if "ready_rss_gib" in result:
        parts.append(f"first step began at {result['ready_rss_gib']:.2f} GiB")
    parts.append(f"run peak {result['peak_rss_gib']:.2f} GiB")
    if result.get("losses"):
        parts.append("losses " + ", ".join(f"{loss:.4f}" for loss in result["losses"]))
    return "; ".join(parts)


PARTS = {"pairs_per_s": pairs_per_s, "memory_1b": memory_1b, "seven_b": seven_b}


def parent(args: argparse.Namespace) -> None:
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    script = os.path.abspath(__file__)
    os.makedirs(args.dir, exist_ok=True)
    for part in parts:
        work = workloads(args)[part]
        write_inputs(args.dir, part, work)
        print(describe(work, part, args.dir), flush=True)
        if part != "pairs_per_s":
            print("collie runs: `collie train` on a YAML", flush=True)
        PARTS[part](script, args, work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--dir", default="/tmp/bench-pref", help="where the checkpoints and pairs are written (kept)")
    parser.add_argument("--steps", type=int, default=0, help="pairs_per_s: timed steps (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="pairs_per_s: run the three runs this many times in turn")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, a few short pairs")
    parser.add_argument("--run", choices=list(RUNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        child(args.run, args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
