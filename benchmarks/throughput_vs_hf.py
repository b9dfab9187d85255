"""Training throughput: collie's Trainer vs transformers' LlamaForCausalLM in a plain loop.

Same ~110M LLaMA shape, same random token batches, same steps, AdamW fp32. Each side runs in
its own process (neither inherits the other's allocator state), `--runs` pairs alternating;
prints each pair's tokens/s and ratio, then the median ratio last.

`--with-memory` also measures, in the same invocation, the memory figures collie's host
allocation policy must keep (`collie/host_memory.py`): the 1B LoRA run of `lora_memory.py`
and the 1B LOMO and AdaLomo fp32 runs of `memory.py`, peak RSS each in its own process.

    OMP_NUM_THREADS=2 python benchmarks/throughput_vs_hf.py [--runs 5] [--steps 10] [--seq 256] [--batch 4]
                                                        [--with-memory]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _rss import RESULT_PREFIX, run_child
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

WARMUP = 2


def shape() -> LlamaConfig:
    return LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                       intermediate_size=2048, vocab_size=32000, tie_word_embeddings=True,
                       max_position_embeddings=1024)


def batches(steps: int, batch: int, seq: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 32000, (batch, seq), generator=g) for _ in range(steps)]


def hf_loop(model_dir: str, data: list[torch.Tensor], lr: float) -> list[float]:
    model = HFLlama.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    times = []
    for ids in data:
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    def __init__(self):
        self.times = []

    def on_train_batch_begin(self, trainer, batch):
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, loss):
        self.times.append(time.perf_counter() - self.start)


def collie_loop(model_dir: str, data: list[torch.Tensor], lr: float) -> list[float]:
    records = [{"tokens": row.tolist()} for ids in data for row in ids]
    config = CollieConfig.load(None, [f"train_micro_batch_size={data[0].shape[0]}", f"max_steps={len(data)}",
                                      f"optimizer.lr={lr}", "logging=[]", f"data.max_length={data[0].shape[1]}"])
    model = CollieModel.from_pretrained(model_dir, config=config)
    timer = StepTimer()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(records), callbacks=[timer])
    trainer.train()
    return timer.times


def side(name: str, model_dir: str, args: argparse.Namespace) -> float:
    """Median tokens/s of one side's timed steps, in this process."""
    torch.manual_seed(0)
    data = batches(args.steps + WARMUP, args.batch, args.seq)
    loop = hf_loop if name == "transformers" else collie_loop
    return args.batch * args.seq / statistics.median(loop(model_dir, data, 1e-4)[WARMUP:])


def memory_rows() -> list[str]:
    """The collie rows of the memory benchmarks, as they print them."""
    here = os.path.dirname(os.path.abspath(__file__))
    lines = []
    for script, only in (("lora_memory.py", "collie_lora"), ("memory.py", "collie_lomo,collie_adalomo")):
        out = subprocess.run([sys.executable, os.path.join(here, script), "--only", only], capture_output=True,
                             text=True, check=True)
        lines += [line for line in out.stdout.splitlines() if line.startswith("collie_")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5, help="alternating pairs of processes")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--with-memory", action="store_true", help="also the LoRA and LOMO/AdaLomo memory rows")
    parser.add_argument("--run", choices=["transformers", "collie"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(RESULT_PREFIX + json.dumps({"tokens_per_s": side(args.run, args.model_dir, args)}), flush=True)
        return
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as model_dir:
        HFLlama(shape()).save_pretrained(model_dir)
        params = sum(p.numel() for p in HFLlama(shape()).parameters())
        print(f"shape: {params / 1e6:.0f}M params, seq {args.seq}, batch {args.batch}, {args.steps} timed steps "
              f"after {WARMUP} warm-up, {args.runs} pairs of processes, threads {torch.get_num_threads()}",
              flush=True)
        ratios = []
        child_args = ["--model-dir", model_dir, "--steps", str(args.steps), "--seq", str(args.seq),
                      "--batch", str(args.batch)]
        for run in range(args.runs):
            hf, ours = (run_child(os.path.abspath(__file__), name, child_args)["tokens_per_s"]
                        for name in ("transformers", "collie"))
            ratios.append(ours / hf)
            print(f"run {run + 1}: transformers {hf:8.1f} tokens/s, collie {ours:8.1f} tokens/s, "
                  f"ratio {ours / hf:.3f}", flush=True)
    if args.with_memory:
        print("\n".join(memory_rows()), flush=True)
    print(f"median ratio collie/transformers: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
