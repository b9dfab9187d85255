"""Real-token training throughput on instruction data of mixed lengths: collie with packing
(`data.packing`) vs transformers' `Trainer` with its usual padding collator
(`DataCollatorForSeq2Seq`, padding each batch to its longest sample).

Data: `../shared/assets/alpaca_tiny.json` (100 Alpaca records, Alpaca prompt, loss on the
response), GPT-2 tokenizer, samples up to 512 tokens; one epoch each; the same randomly
initialised LLaMA (20m-like: hidden 256, 8 layers, GPT-2 vocabulary), AdamW fp32, one process.
Throughput counts real (non-padding) tokens only. Prints both and the ratio (collie / HF) last.

    OMP_NUM_THREADS=2 python benchmarks/packing_throughput.py
    python benchmarks/packing_throughput.py --dry-run      # 2 layers, 16 records, seq 128

The dry run uses the repository's own data and tokenizer (examples/data, collie's bundled BPE),
so it runs anywhere; the measurement needs ../shared/assets.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared",
                      "assets")


def model_config(vocab: int, layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=256, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                       intermediate_size=688, vocab_size=vocab, max_position_embeddings=1024)


def collie_run(model_dir: str, records: list[dict], tokenizer, max_length: int, batch: int) -> tuple[int, float]:
    from collie import CollieConfig
    from collie.data import CollieDatasetForTraining
    from collie.data.packing import PackedDataset
    from collie.models.base import CollieModel
    from collie.trainer import Trainer

    dataset = CollieDatasetForTraining(records, tokenizer, max_length=max_length)
    tokens = sum(len(item["input_ids"]) for item in dataset)
    packed = PackedDataset(dataset, max_length)
    # About as many real tokens per step as the transformers side's `batch` samples.
    rows_per_step = min(len(packed), max(1, round(batch * tokens / len(dataset) / max_length)))
    config = CollieConfig(train_micro_batch_size=rows_per_step, logging=[], seed=0)
    config.data.max_length = max_length
    config.optimizer.lr = 1e-4
    trainer = Trainer(CollieModel.from_pretrained(model_dir, config=config), config, train_dataset=packed,
                      tokenizer=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return tokens, time.perf_counter() - start


def hf_run(model_dir: str, records: list[dict], tokenizer, max_length: int, batch: int) -> tuple[int, float]:
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from collie.data import CollieDatasetForTraining

    items = list(CollieDatasetForTraining(records, tokenizer, max_length=max_length))
    tokens = sum(len(item["input_ids"]) for item in items)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, num_train_epochs=1,
                                 learning_rate=1e-4, optim="adamw_torch_fused", report_to=[], save_strategy="no",
                                 logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=items,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
        start = time.perf_counter()
        trainer.train()
        return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="samples per step on the transformers side")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    from transformers import AutoTokenizer, LlamaForCausalLM

    layers = 8
    if args.dry_run:
        from collie.init_model import bundled_tokenizer_path

        tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_path())
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data",
                               "collie_qa.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()][:16]
        args.max_length, layers = 128, 2
    else:
        if not os.path.isdir(ASSETS):
            raise SystemExit(f"{ASSETS}: not found (the benchmark's data: alpaca_tiny.json and gpt2-tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(ASSETS, "gpt2-tokenizer"))
        with open(os.path.join(ASSETS, "alpaca_tiny.json")) as f:
            records = [{k: r[k] for k in ("instruction", "input", "output")} for r in json.load(f)]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory() as root:
        torch.manual_seed(0)
        vocab = -(-len(tokenizer) // 64) * 64
        LlamaForCausalLM(model_config(vocab, layers)).save_pretrained(root)
        hf_tokens, hf_s = hf_run(root, records, tokenizer, args.max_length, args.batch)
        ours_tokens, ours_s = collie_run(root, records, tokenizer, args.max_length, args.batch)
    assert hf_tokens == ours_tokens
    print(f"{len(records)} records, {hf_tokens} real tokens, max_length {args.max_length}, one epoch, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'run':<36}{'time':>9}{'real tok/s':>12}")
    print(f"{'transformers Trainer, padding':<36}{hf_s:>8.1f}s{hf_tokens / hf_s:>12.1f}")
    print(f"{'collie, packing':<36}{ours_s:>8.1f}s{ours_tokens / ours_s:>12.1f}")
    print(f"collie / transformers: {(ours_tokens / ours_s) / (hf_tokens / hf_s):.2f}")


if __name__ == "__main__":
    main()
