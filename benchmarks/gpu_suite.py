"""Every GPU figure in one call, on one H100/H200, in at most 8 minutes: training tokens/s/GPU
and MFU for the 1B and 7B LLaMA shapes against transformers' `Trainer`, the 7B LOMO step's
peak CUDA memory against the LOMO paper's, the 7B QLoRA step's, serving tokens/s, and the
seeds' own configuration against CoLLiE's published TGS. One table, last.

Rows (random weights, random tokens, activation checkpointing, one process per row so each
peak is its own):

- train 1b: `benchmarks/gpu_throughput.py`'s runs (fp32 master weights, bf16 autocast, fused
  AdamW): transformers' Trainer (the baseline), collie eager, collie with `compile: true`.
  Seq 2048, batch 1, 3 warm-up + 10 timed steps.
- train 7b: the same three with bf16 weights and AdamW state (fp32 masters need 16 B/param,
  108 GB: no single GPU holds them). Seq 2048, batch 1, 2 + 5 steps.
- lomo_memory 7b: collie's LOMO (bf16 weights, no master copy), batch 8 x seq 512, against
  the LOMO paper's 14.58 GB for LLaMA-7B (its Table 1; the paper's GB are GiB: its 12.55 GB
  of weights are 6.74e9 x 2 bytes / 2^30; batch 8 x 512 as OpenLMLab/LOMO issue #16 reads it).
- qlora_memory 7b: NF4 base, LoRA r16 on q/k/v/o (lora_memory.py's LORA), AdamW, batch 8 x 512.
- serve 1b: `collie serve`'s engine in-process (continuous batching), 64 greedy requests
  (serve_throughput.py's workload: prompts of 3-40 words, 4-64 new tokens); generated
  tokens/s of the second, warm round.
- seed_004 7b: the seeds' configuration, LOMO ("inplace SGD"), seq 1024, batch 3, against
  CoLLiE's 832.5 TGS on one RTX 3090.

Training rows run with SDPA restricted to the flash kernel (`--attention default` lets SDPA
choose). Peak memory, labelled `cuda`: `torch.cuda.max_memory_allocated` from the start of
training (the weights are resident throughout; QLoRA's after they became 4-bit); the 1B rows
report it as gpu_throughput.py does (its collie runs: the last step's peak, as collie's memory
monitor resets it each step). Without CUDA (the dry run): the process's peak RSS, labelled
`rss`. MFU: collie's `flops_per_token` against collie's peak table
(`collie.monitors.monitors.peak_flops`), as gpu_throughput.py computes it. collie shards with
FSDP2 only when dp > 1, so on one GPU the model runs unwrapped.

Each row has a time limit and the whole suite a budget: rows run cheapest first (the compile
rows last), a row that fails, runs out of memory or out of time prints why and the rest go on.

    python benchmarks/gpu_suite.py                    # one H100/H200, <= 8 minutes
    python benchmarks/gpu_suite.py --only seed_004    # rows by key (see the table)
    python benchmarks/gpu_suite.py --dry-run          # tiny shapes on CPU: checks the plumbing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Optional

import torch
from _rss import peak_rss_gib, random_records, shape_model_config
from gpu_throughput import _Clock
from gpu_throughput import child as throughput_child
from lora_memory import LORA
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.init_model import bundled_tokenizer_path
from collie.models import LlamaForCausalLM
from collie.models.base import load_tokenizer
from collie.models.registry import spec_for
from collie.monitors.monitors import peak_flops, peak_flops_of
from collie.trainer import Callback
from collie.trainer import Trainer as CollieTrainer

RESULT = "RESULT "
BUDGET_S = 470  # of the 8 minutes; the rest is this process starting and printing
DRY_RUN_LIMIT_S = 120
LOMO_PAPER_GIB = 14.58
COLLIE_TGS, COLLIE_GPU = 832.5, "RTX 3090"
QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
SERVE_REQUESTS, DRY_RUN_REQUESTS = 64, 8
KV_CACHE_GIB = {"cuda": 4.0, "cpu": 0.25}


@dataclass(frozen=True)
class Row:
    key: str       # --only and the child's name
    group: str     # the table's first column
    shape: str
    runner: str    # transformers, adamw, adamw_compile, lomo, qlora, serve
    source: str    # what measures it: gpu_throughput (its child), collie, transformers, engine
    config: str    # the table's config column (no spaces)
    seq: int
    batch: int
    warmup: int
    steps: int
    limit_s: int
    # What the ratio column divides by: ("tgs", key of a row), ("tgs", published TGS) or ("peak", GiB).
    vs: Optional[tuple] = None
    flash: bool = True


def _train(shape: str, runner: str, config: str, limit_s: int) -> Row:
    if shape == "1b":  # gpu_throughput.py's runs as they are
        source, warmup, steps = "gpu_throughput", 3, 10
    else:
        source, warmup, steps = "transformers" if runner == "transformers" else "collie", 2, 5
    return Row(f"train_{shape}_{runner}", "train", shape, runner, source, config, 2048, 1, warmup, steps, limit_s,
               vs=("tgs", f"train_{shape}_transformers"))


ROWS = [
    _train("1b", "transformers", "transformers_Trainer", 75),
    _train("1b", "adamw", "collie_adamw", 60),
    _train("1b", "adamw_compile", "collie_adamw_compile", 150),
    _train("7b", "transformers", "transformers_Trainer", 75),
    _train("7b", "adamw", "collie_adamw", 75),
    _train("7b", "adamw_compile", "collie_adamw_compile", 150),
    Row("lomo_memory", "lomo_memory", "7b", "lomo", "collie", "collie_lomo_b8x512", 512, 8, 1, 2, 60,
        vs=("peak", LOMO_PAPER_GIB)),
    Row("qlora_memory", "qlora_memory", "7b", "qlora", "collie", "collie_qlora_nf4_r16_b8x512", 512, 8, 1, 2, 75, flash=False),
    Row("serve", "serve", "1b", "serve", "engine", f"collie_engine_{SERVE_REQUESTS}req", 0, SERVE_REQUESTS, 1, 1, 75,
        flash=False),
    Row("seed_004", "seed_004", "7b", "lomo", "collie", "collie_lomo_b3x1024", 1024, 3, 2, 5, 60, vs=("tgs", COLLIE_TGS)),
]
ROW_BY_KEY = {row.key: row for row in ROWS}


def dry(row: Row) -> Row:
    """The row's tiny-shape CPU version: the same code path, seconds instead of minutes."""
    batch = DRY_RUN_REQUESTS if row.source == "engine" else row.batch
    return replace(row, shape="tiny", seq=32 if row.seq else 0, batch=batch, warmup=1, steps=1,
                   limit_s=DRY_RUN_LIMIT_S)


# -- the measurements (each in its own process) ------------------------------------------------
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def storage_dtype() -> torch.dtype:
    # bf16 on GPUs; on CPUs bf16 matmuls are slow and the dry run checks plumbing, not precision.
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def peak_memory() -> tuple[float, str]:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30, "cuda"
    return peak_rss_gib(), "rss"


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def model_flops_utilization(model_config, seq: int, params: float, tgs: float, peak: Optional[float]) -> Optional[float]:
    """gpu_throughput.child's arithmetic: collie's FLOPs per token times tokens/s over the peak."""
    spec = spec_for(model_config)
    return spec.flops_per_token(spec.dims(model_config), seq, params) * tgs / peak if peak else None


def random_collie_model(model_config) -> torch.nn.Module:
    """collie's LLaMA with random weights drawn on the device itself, in the storage dtype:
    collie's own initialiser draws on the CPU with a generator per tensor, about a minute for
    7B per row, and the values do not change the timings (random, not zeros, which would)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(model_config)
    model = model.to(storage_dtype()).to_empty(device=device())
    model.tie_weights()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, model_config.initializer_range)
    return model


def train_collie(row: Row) -> dict:
    model_config = shape_model_config(row.shape)
    model = random_collie_model(model_config)
    config = CollieConfig(model_config=model_config, train_micro_batch_size=row.batch, logging=[],
                          max_steps=row.warmup + row.steps, checkpointing=True, compile=row.runner == "adamw_compile",
                          quantization_config=QLORA if row.runner == "qlora" else None)
    config.data.max_length = row.seq
    config.optimizer.name = "lomo" if row.runner == "lomo" else "adamw"
    config.optimizer.lr = 1e-5
    for key, value in (LORA if row.runner == "qlora" else {}).items():
        setattr(config.peft, key, value)
    clock = _Clock()

    class Timer(Callback):
        def on_train_begin(self, trainer) -> None:
            reset_peak_memory()  # QLoRA: after the bf16 weights became 4-bit

        def on_train_batch_begin(self, trainer, batch) -> None:
            clock.start()

        def on_train_batch_end(self, trainer, loss) -> None:
            clock.stop()

    records = random_records(model_config.vocab_size, row.seq, row.batch * (row.warmup + row.steps))
    # monitors=[]: collie's memory monitor resets the CUDA peak at every step; this row wants the run's.
    CollieTrainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[Timer()],
                  monitors=[]).train()
    trainable = None if row.runner == "qlora" else sum(p.numel() for p in model.parameters())
    return _training_result(row, model_config, trainable, clock.times)


def train_transformers(row: Row) -> dict:
    """The baseline at 7B: transformers' LlamaForCausalLM built on the device in bf16 and its
    Trainer with bf16, gradient checkpointing and fused AdamW (gpu_throughput.py's settings)."""
    # Here, not at the top: transformers' Trainer imports peft and bitsandbytes (seconds), which
    # the other rows' processes need not pay for.
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model_config = shape_model_config(row.shape)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(model_config, dtype=storage_dtype())
    clock = _Clock()

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            reset_peak_memory()

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.stop()

    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="collie-gpu-suite-"), per_device_train_batch_size=row.batch,
                             max_steps=row.warmup + row.steps, learning_rate=1e-5, bf16=cuda, use_cpu=not cuda,
                             gradient_checkpointing=True, optim="adamw_torch_fused" if cuda else "adamw_torch",
                             report_to=[], save_strategy="no", logging_strategy="no", dataloader_num_workers=0)
    records = random_records(model_config.vocab_size, row.seq, row.batch * (row.warmup + row.steps))
    dataset = [{"input_ids": r["tokens"], "labels": r["tokens"]} for r in records]
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[Timer()]).train()
    return _training_result(row, model_config, sum(p.numel() for p in model.parameters()), clock.times)


def _training_result(row: Row, model_config, trainable: Optional[int], times: list[float]) -> dict:
    tgs = row.batch * row.seq / statistics.median(times[row.warmup:])
    peak_gib, memory = peak_memory()
    result = {"tgs": tgs, "peak_gib": peak_gib, "memory": memory, "mfu": None}
    if trainable is not None:
        result["mfu"] = model_flops_utilization(model_config, row.seq, trainable, tgs, peak_flops(device()))
    if row.vs == ("tgs", COLLIE_TGS) and trainable is not None:
        # CoLLiE's own figure by the same arithmetic, against its GPU's peak in collie's table.
        result["published_mfu"] = model_flops_utilization(model_config, row.seq, trainable, COLLIE_TGS,
                                                          peak_flops_of(COLLIE_GPU, torch.bfloat16, False))
    return result


def train_1b(row: Row) -> dict:
    """gpu_throughput.py's own runs (its child), unchanged."""
    result = throughput_child(row.shape, row.runner, row.seq, row.steps, row.warmup)
    peak_gib, memory = (result["peak_gib"], "cuda") if result["peak_gib"] is not None else peak_memory()
    return {"tgs": result["tgs"], "mfu": result["mfu"], "peak_gib": peak_gib, "memory": memory}


def serve(row: Row) -> dict:
    """collie serve's Engine in this process, on token prompts: the second round is timed."""
    # Here, not at the top: the serving stack (and serve_throughput's httpx) only this row's process needs.
    from serve_throughput import time_engine, workload

    from collie.serve.engine import Engine

    tokenizer = load_tokenizer(bundled_tokenizer_path())
    model = random_collie_model(shape_model_config(row.shape)).eval()
    work = [(tokenizer(prompt)["input_ids"], max_tokens) for prompt, max_tokens in workload(row.batch)]
    engine = Engine(model, tokenizer, max_batch_size=len(work), max_queue=len(work), batch_wait_s=0.0,
                    kv_cache_gib=KV_CACHE_GIB[device().type], max_num_tokens=4096)
    tokens, seconds = time_engine(engine, work, before_round=reset_peak_memory)
    peak_gib, memory = peak_memory()
    return {"tgs": tokens / seconds, "mfu": None, "peak_gib": peak_gib, "memory": memory}


MEASURES = {"gpu_throughput": train_1b, "collie": train_collie, "transformers": train_transformers, "engine": serve}


def child(key: str, dry_run: bool, attention: str) -> None:
    row = dry(ROW_BY_KEY[key]) if dry_run else ROW_BY_KEY[key]
    flash_only = row.flash and attention == "flash"
    # Flash only: a run that cannot use it fails and says so, rather than timing another kernel.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if flash_only else contextlib.nullcontext():
        result = MEASURES[row.source](row)
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(RESULT + json.dumps(result), flush=True)


# -- the parent: rows in turn, then the table ---------------------------------------------------
def run_row(row: Row, args: argparse.Namespace, limit_s: float) -> dict | str:
    """The row's result, or why there is none (OOM, FAILED, TIMEOUT)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", row.key, "--attention", args.attention]
    env = dict(os.environ)
    if args.dry_run:
        cmd.append("--dry-run")
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, GPU or not
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own group: a timeout ends compile workers too
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"TIMEOUT: stopped after {limit_s:.0f} s"
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT):])
    if "OutOfMemoryError" in err or "out of memory" in err:
        return "OOM: " + _last_line(err)
    return f"FAILED (exit {proc.returncode}): " + _last_line(err)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def ratio(row: Row, results: dict) -> tuple[Optional[float], str]:
    """(our figure / the baseline's, what the baseline is); None where there is none."""
    result = results.get(row.key)
    if row.vs is None or not isinstance(result, dict):
        return None, ""
    measure_name, reference = row.vs
    if isinstance(reference, str):
        base = results.get(reference)
        if not isinstance(base, dict):
            return None, f"of {ROW_BY_KEY[reference].config} (no figure)"
        return result["tgs"] / base["tgs"], f"of {ROW_BY_KEY[reference].config}"
    if measure_name == "peak":
        return result["peak_gib"] / reference, f"of {reference} GiB (LOMO paper, LLaMA-7B)"
    return result["tgs"] / reference, f"of {reference} TGS (CoLLiE, 1x {COLLIE_GPU})"


def table(rows: list[Row], results: dict, dry_run: bool) -> list[str]:
    lines = [f"{'row':<13}{'shape':<11}{'config':<29}{'tokens/s/GPU':>13}{'MFU':>8}{'peak GiB':>14}  vs baseline"]
    for row in rows:
        shape = f"tiny({ROW_BY_KEY[row.key].shape})" if dry_run else row.shape
        head = f"{row.group:<13}{shape:<11}{row.config:<29}"
        result = results[row.key]
        if isinstance(result, str):
            lines.append(head + result)
            continue
        if result["mfu"] is not None:
            mfu = f"{result['mfu']:.1%}"
        else:
            mfu = "n/a" if row.group in ("train", "lomo_memory", "seed_004") else "-"
        value, reference = ratio(row, results)
        vs = f"{value:.3f}x {reference}" if value is not None else reference or "-"
        lines.append(head + f"{result['tgs']:>13.1f}{mfu:>8}{result['peak_gib']:>9.2f} {result['memory']:<4}  {vs}")
    return lines


def notes(results: dict, dry_run: bool) -> list[str]:
    devices = sorted({result["device"] for result in results.values() if isinstance(result, dict)})
    lines = [f"device: {', '.join(devices) or 'none reported'}",
             "train 1b: fp32 master weights + bf16 autocast; train 7b: bf16 weights and AdamW state; "
             "MFU n/a: no peak FLOP/s known for this device"]
    seed = results.get("seed_004")
    if isinstance(seed, dict) and seed.get("published_mfu") is not None:
        shape = "the tiny shape" if dry_run else "7b"
        lines.append(f"seed_004: CoLLiE's {COLLIE_TGS} TGS on one {COLLIE_GPU} is {seed['published_mfu']:.1%} MFU at "
                     f"{shape} by the same arithmetic (collie's peak table)")
    return lines


def parent(args: argparse.Namespace) -> None:
    rows = [ROW_BY_KEY[key] for key in dict.fromkeys(args.only.split(","))] if args.only else ROWS
    if args.dry_run:
        rows = [dry(row) for row in rows]
    start = time.monotonic()
    deadline = start + args.budget_s
    mode = "DRY RUN on CPU: tiny shapes, seq 32, 1 warm-up + 1 timed step; figures check the plumbing, not speed" \
        if args.dry_run else f"SDPA {'flash only' if args.attention == 'flash' else 'its own choice'} for training rows"
    # The device is named by the rows' processes: this one never touches CUDA (a context here
    # would hold GPU memory the rows need).
    print(f"gpu_suite: {len(rows)} rows, one process each, budget {deadline - start:.0f} s; {mode}; torch "
          f"{torch.__version__}; one GPU: no FSDP2 wrap (collie shards only when dp > 1)", flush=True)
    results: dict = {}
    # The compile rows last: the slowest to start, so a spent budget costs them and not the rest.
    for row in sorted(rows, key=lambda r: r.runner == "adamw_compile"):
        left = deadline - time.monotonic()
        if left < 10:
            results[row.key] = "SKIPPED: the time budget is spent"
        else:
            began = time.monotonic()
            results[row.key] = run_row(row, args, min(row.limit_s, left))
            status = "ok" if isinstance(results[row.key], dict) else results[row.key].split(":")[0]
            print(f"  {row.key}: {status} in {time.monotonic() - began:.0f} s", flush=True)
    print(f"total {time.monotonic() - start:.0f} s")
    print("\n".join(table(rows, results, args.dry_run)))
    print()
    print("\n".join(notes(results, args.dry_run)), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, 1 step each: checks the plumbing")
    parser.add_argument("--only", default="", help=f"comma-separated row keys: {', '.join(ROW_BY_KEY)}")
    parser.add_argument("--attention", choices=("flash", "default"), default="flash",
                        help="training rows' SDPA kernels: flash only (default), or SDPA's own choice")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="seconds for all rows together")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [key for key in args.only.split(",") if args.only and key not in ROW_BY_KEY]
    if unknown:
        parser.error(f"--only: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROW_BY_KEY)}")
    if args.child:
        child(args.child, args.dry_run, args.attention)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite.py: needs a CUDA GPU (torch.cuda.is_available() is False); --dry-run checks the plumbing "
              "on CPU", file=sys.stderr)
        return 2
    parent(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
