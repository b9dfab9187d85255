"""Run under torchrun (2 processes): MODEL RECORDS OUT PORT LAYOUT... — train 4 steps (float64) with
serve.port, a completion asked at step 2; then the same without serving. OUT/result.json holds
both loss lists and the answer."""

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import AskAt, Losses  # noqa: E402

from collie import CollieConfig  # noqa: E402
from collie.data import CollieDatasetForTraining  # noqa: E402
from collie.models.base import CollieModel, load_tokenizer  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

PROMPT = "Question: What is collie?"


def train(model_dir, records, out, layout, callbacks=(), serve=()):
    config = CollieConfig.load(None, ["max_steps=4", "logging=[]", "checkpoint_every_n_steps=2", "param_dtype=float64",
                                      "data.max_length=64", "optimizer.lr=0.001", f"output_dir={out}", *layout, *serve])
    model = CollieModel.from_pretrained(model_dir, config=config)
    tokenizer = load_tokenizer(model_dir)
    losses = Losses()
    Trainer(model, config, train_dataset=CollieDatasetForTraining(records, tokenizer, max_length=64),
            tokenizer=tokenizer, callbacks=[losses, *callbacks]).train()
    return losses.values


def main() -> None:
    model_dir, records, out, port, *layout = sys.argv[1:]
    answer = {}

    def ask():
        import httpx

        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        answer.update(httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120).json())

    asker = AskAt(2, ask, f"http://127.0.0.1:{port}/health")
    served = train(model_dir, records, f"{out}/served", layout, [asker], [f"serve.port={port}"])
    plain = train(model_dir, records, f"{out}/plain", layout)
    if dist.get_rank() == 0:
        asker.thread.join(timeout=120)
        with open(f"{out}/result.json", "w") as f:
            json.dump({"served": served, "plain": plain, "answer": answer}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
