"""`torchrun -m collie train CONFIG key=value` is all a user types for a parallel run."""

import csv
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quickstart_under_torchrun_with_tensor_parallel(tmp_path):
    out = tmp_path / "run"
    data = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "collie", "train", os.path.join(ROOT, "examples", "quickstart.yaml"), "tp_size=2",
                    "max_steps=4", "eval_per_n_steps=4", f"output_dir={out}", f"data.train_file={data}",
                    f"data.eval_file={data}", "logging=[csv]"],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, cwd=ROOT)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[-1]["ppl"] and rows[-1]["exact_match"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()
