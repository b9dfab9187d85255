"""Memory of the logits: one training step (forward + backward, activation checkpointing, fp32)
of a LLaMA with a 128k vocabulary (LLaMA-3 style), collie with `loss_chunk_tokens` against
transformers (whole logits, its own loss) and against collie without chunking. Same weights
shape, same tokens. Each gradient is dropped as soon as backward has made it (as LOMO's fused update
does), so what the step holds is activations and logits — the subject here.

Each run is its own process and reports its peak RSS and how far its anonymous memory rose above
the built model during the step. Ratios are to transformers.
The two collie runs hold the same weights (their losses agree); transformers has its own random
initialisation.

    OMP_NUM_THREADS=2 python benchmarks/logits_memory.py [--shape 1b] [--seq 2048] [--chunk 1024]
    python benchmarks/logits_memory.py --dry-run      # tiny shape, 8k vocabulary, seq 128
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _rss import device, report, run_child, shape_model_config, start_anon_sampling

BASELINE = "transformers"
RUNS = ("transformers", "collie_whole_logits", "collie_chunked")


def _anon_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def child(name: str, args: argparse.Namespace) -> None:
    config = shape_model_config(args.shape)
    config.vocab_size = args.vocab
    ids = torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(0)).to(device())
    if name == BASELINE:
        from transformers import LlamaForCausalLM as HFLlama

        model = HFLlama(config).to(device()).train()
        model.gradient_checkpointing_enable()
        step = lambda: model(input_ids=ids, labels=ids, use_cache=False).loss  # noqa: E731
    else:
        from collie.distributed.parallelize import apply_activation_checkpointing
        from collie.models import LlamaForCausalLM
        from collie.models.llama.spec import LLAMA

        model = LlamaForCausalLM.from_config(config, seed=0, dtype=torch.float32).to(device()).train()
        apply_activation_checkpointing(LLAMA, model)
        model.loss_chunk_tokens = args.chunk if name == "collie_chunked" else 0
        step = lambda: model(ids, labels=ids).loss  # noqa: E731
    for param in model.parameters():  # each gradient is used and dropped as it is made, as LOMO does
        param.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    before = _anon_gib()
    start_anon_sampling()
    start = time.perf_counter()
    loss = step()
    loss.backward()
    report(step_s=time.perf_counter() - start, before_gib=before, loss=float(loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024, help="collie's loss_chunk_tokens")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--run", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.vocab, args.seq, args.chunk = "tiny", 8192, 128, 32
    if args.run:
        child(args.run, args)
        return
    child_args = ["--shape", args.shape, "--vocab", str(args.vocab), "--seq", str(args.seq), "--chunk", str(args.chunk)]
    print(f"shape {args.shape}, vocab {args.vocab}, seq {args.seq}, batch 1, fp32, activation checkpointing, "
          f"loss_chunk_tokens {args.chunk}, device {device().type}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
          flush=True)
    print(f"{'run':<22}{'peak RSS':>10}{'ratio':>9}{'step rise':>12}{'ratio':>8}{'loss':>9}{'s':>8}", flush=True)
    base = None
    for name in RUNS:
        r = run_child(os.path.abspath(__file__), name, child_args)
        rise = r["peak_anon_gib"] - r["before_gib"]
        base = (r["peak_rss_gib"], rise) if name == BASELINE else base
        print(f"{name:<22}{r['peak_rss_gib']:>6.2f} GiB{r['peak_rss_gib'] / base[0]:>8.2f}x{rise:>8.2f} GiB"
              f"{rise / base[1]:>7.2f}x{r['loss']:>9.4f}{r['step_s']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
