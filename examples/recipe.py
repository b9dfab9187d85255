"""What the example recipes share: rows from a `datasets` name (the real dataset) or from a local
JSON/JSONL file in the same format (the fixtures CI runs on), a model (`model: DIR`, or a random
one of `init_shape`), the config's layout from a YAML file plus key=value overrides, and one final
line of metrics (`metrics: {...}`) after training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from collie import CollieConfig  # noqa: E402


def arguments(doc: str, dataset: str, subset: Optional[str], split: str, eval_split: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--dataset", default=dataset, help=f"a `datasets` name or a local .json/.jsonl in its format "
                                                          f"(default {dataset})")
    parser.add_argument("--subset", default=subset, help="the dataset's configuration name")
    parser.add_argument("--split", default=split)
    parser.add_argument("--eval-dataset", help="default: the same dataset, --eval-split")
    parser.add_argument("--eval-split", default=eval_split)
    parser.add_argument("--limit", type=int, help="use the first N training rows")
    parser.add_argument("--eval-limit", type=int, default=64, help="evaluate on the first N rows")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    return parser.parse_args()


def rows(name_or_file: str, subset: Optional[str], split: str, limit: Optional[int]) -> list[dict]:
    """A local file's records, or a split of a hub dataset (datasets.load_dataset)."""
    if os.path.isfile(name_or_file):
        with open(name_or_file, encoding="utf-8") as f:
            data = [json.loads(line) for line in f if line.strip()] if name_or_file.endswith(".jsonl") else json.load(f)
    else:
        import datasets

        data = datasets.load_dataset(name_or_file, subset, split=split)
    data = list(data)[:limit] if limit else list(data)
    if not data:
        raise SystemExit(f"{name_or_file}: no rows")
    return data


def train_and_eval_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    train = rows(args.dataset, args.subset, args.split, args.limit)
    evaluation = rows(args.eval_dataset or args.dataset, args.subset, args.eval_split, args.eval_limit)
    return train, evaluation


def model_and_tokenizer(config_file: str, overrides: list[str], prepare: Optional[Callable[[str], str]] = None):
    """The config (layout, optimizer, data settings) and the model it names, every rank.
    `prepare(model_dir) -> model_dir` runs on rank 0 first (e.g. to grow the vocabulary)."""
    import torch.distributed as dist

    from collie.commands.train import seed_checkpoint
    from collie.distributed.env import init_distributed
    from collie.models.base import CollieModel, load_tokenizer

    config = CollieConfig.load(config_file, overrides)
    config.validate()
    env = init_distributed(config.dist_timeout_s)
    if not config.model:
        config.model, config.init_shape = seed_checkpoint(config, env), None
    if prepare is not None:
        prepared = [prepare(config.model) if env.is_main else None]
        if dist.is_initialized():
            dist.broadcast_object_list(prepared, src=0)
        config.model = prepared[0]
    tokenizer = load_tokenizer(config.tokenizer or config.model, config.trust_remote_code)
    return config, CollieModel.from_pretrained(config.model, config=config), tokenizer


def prompt_and_target(record: dict) -> dict:
    """An {"input", "output"} training record as a generation prompt with its reference."""
    return {"text": record["input"], "target": record["output"]}


def report(trainer) -> dict:
    """Train, evaluate once more at the end, print `metrics: {...}` (rank 0), save the model."""
    trainer.train()
    results = {k: v for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    if trainer.config.output_dir:
        trainer.save_model(os.path.join(trainer.config.output_dir, "final"))
    if trainer.runtime.is_main:
        print("metrics:", json.dumps(results, sort_keys=True), flush=True)
    return results
