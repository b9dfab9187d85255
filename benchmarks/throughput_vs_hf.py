"""Training throughput: collie's Trainer vs transformers' LlamaForCausalLM in a plain loop.

Same ~110M LLaMA shape, same random token batches, same steps, AdamW fp32, one process.
Prints tokens/s for both and the ratio (collie / HF) last.

    OMP_NUM_THREADS=2 python benchmarks/throughput_vs_hf.py [--steps 10] [--seq 256] [--batch 4]
"""

import argparse
import statistics
import tempfile
import time

import torch
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as model_dir:
        HFLlama(shape()).save_pretrained(model_dir)
        params = sum(p.numel() for p in HFLlama(shape()).parameters())
        data = batches(args.steps + WARMUP, args.batch, args.seq)
        tokens = args.batch * args.seq
        print(f"shape: {params / 1e6:.0f}M params, seq {args.seq}, batch {args.batch}, "
              f"{args.steps} timed steps after {WARMUP} warm-up, threads {torch.get_num_threads()}")
        hf = tokens / statistics.median(hf_loop(model_dir, data, 1e-4)[WARMUP:])
        print(f"transformers  {hf:8.1f} tokens/s")
        ours = tokens / statistics.median(collie_loop(model_dir, data, 1e-4)[WARMUP:])
        print(f"collie        {ours:8.1f} tokens/s")
        print(f"ratio collie/transformers: {ours / hf:.3f}")


if __name__ == "__main__":
    main()
