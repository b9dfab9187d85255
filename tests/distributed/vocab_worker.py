"""Run under torchrun (2 processes): MODEL RECORDS OUT — the expanded-vocabulary model (an odd
vocabulary: uneven shards) trained under tp2 and tp2 + loss_parallel; OUT/vocab.json holds the losses."""

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import Losses  # noqa: E402

from collie import CollieConfig  # noqa: E402
from collie.data import CollieDatasetForTraining  # noqa: E402
from collie.models.base import CollieModel  # noqa: E402
from collie.trainer import Trainer  # noqa: E402


def run(model_dir, records, overrides):
    config = CollieConfig.load(None, ["max_steps=4", "logging=[]", "param_dtype=float64", "optimizer.lr=0.01",
                                      "train_micro_batch_size=2", *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    with open(records) as f:
        dataset = CollieDatasetForTraining(json.load(f))
    losses = Losses()
    Trainer(model, config, train_dataset=dataset, callbacks=[losses]).train()
    return losses.values


def main() -> None:
    model_dir, records, out = sys.argv[1:4]
    results = {name: run(model_dir, records, ["dp_size=1", "tp_size=2", *extra])
               for name, extra in (("tp2", []), ("tp2_loss_parallel", ["loss_parallel=true"]))}
    results["dp2"] = run(model_dir, records, ["dp_size=2", "train_micro_batch_size=1"])
    if dist.get_rank() == 0:
        with open(f"{out}/vocab.json", "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
