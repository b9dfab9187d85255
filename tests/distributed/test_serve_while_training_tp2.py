"""Serving during training under tensor parallel (2 processes): the answer given at step 2 is the
step-2 checkpoint's greedy output, and the losses equal those of the same run without serving."""

import json
import os
import subprocess
import sys

import torch
from helpers import free_port

from collie.cli import main
from collie.models.base import CollieModel, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def test_tp2_training_answers_from_the_current_weights_and_keeps_its_losses(tmp_path):
    model_dir = str(tmp_path / "tiny")
    assert main(["init-model", "--shape", "tiny", model_dir]) == 0
    out = tmp_path / "runs"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    os.path.join(HERE, "serve_train_worker.py"), model_dir, TRAIN_FILE, str(out), str(free_port()),
                    "tp_size=2"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    result = json.loads((out / "result.json").read_text())
    assert result["served"] == result["plain"] and len(result["served"]) == 4
    assert result["answer"]["system_fingerprint"] == "collie-step-2"
    assert main(["convert", str(out / "served" / "checkpoints" / "step-2"), "--to-hf", str(tmp_path / "s2")]) == 0
    model = CollieModel.from_pretrained(str(tmp_path / "s2"), dtype=torch.float64).eval()
    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer("Question: What is collie?")["input_ids"]
    new = model.generate(torch.tensor([ids]), max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)[0, len(ids):]
    new = new.tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    assert result["answer"]["choices"][0]["text"] == tokenizer.decode(new, skip_special_tokens=True)
