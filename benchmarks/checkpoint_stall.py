"""How long a checkpoint stalls training: synchronous DCP save vs `checkpoint_async` (staging
only; the write continues in the background). 100m LLaMA shape, AdamW (model + optimizer
state), one process; the same trainer saves both ways, several times, median printed.

    OMP_NUM_THREADS=2 python benchmarks/checkpoint_stall.py [--shape 100m] [--repeats 3] [--dir DIR]
    python benchmarks/checkpoint_stall.py --dry-run      # tiny shape, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from _rss import build_collie_model, random_records, shape_model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="100m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="", help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.repeats = "tiny", 1
    from collie import CollieConfig
    from collie.data import CollieDatasetForTraining
    from collie.trainer import Trainer
    from collie.trainer.background_checkpoint import BackgroundWriter

    root = args.dir or tempfile.mkdtemp(prefix="collie-stall-")
    model = build_collie_model(shape_model_config(args.shape), torch.float32)
    config = CollieConfig(model_config=model.config, logging=[], max_steps=1, output_dir=root)
    config.data.max_length = 128
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(random_records(model.config.vocab_size,
                                                                                          128, 1)))
    trainer.train()  # one step: the optimizer has its state, as in a real checkpoint
    stalls: dict[str, list[float]] = {"sync": [], "async": []}
    background = BackgroundWriter()
    for i in range(args.repeats):
        for mode in ("sync", "async"):
            trainer._background = background if mode == "async" else None
            path = os.path.join(root, f"{mode}-{i}")
            start = time.perf_counter()
            trainer.save_checkpoint(path)
            stalls[mode].append(time.perf_counter() - start)
            background.wait()  # the next save starts from a quiet disk
    sync, asynchronous = statistics.median(stalls["sync"]), statistics.median(stalls["async"])
    size = sum(os.path.getsize(os.path.join(root, "sync-0", f)) for f in os.listdir(os.path.join(root, "sync-0")))
    print(f"shape {args.shape}, checkpoint {size / 2**30:.2f} GiB (model + AdamW state), {args.repeats} repeat(s), "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'save':<8}{'stall (median)':>16}")
    print(f"{'sync':<8}{sync:>14.3f} s")
    print(f"{'async':<8}{asynchronous:>14.3f} s")
    print(f"async stall / sync stall: {asynchronous / sync:.3f}")


if __name__ == "__main__":
    main()
