"""`torchrun -m collie train CONFIG key=value` is all a user types for a parallel run."""

import csv
import os
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from collie.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_quickstart_under_torchrun_with_tensor_parallel(tmp_path):
    args = ["max_steps=4", "eval_per_n_steps=4", f"data.train_file={DATA}", f"data.eval_file={DATA}", "logging=[csv]"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "collie", "train", QUICKSTART, "tp_size=2", f"output_dir={tmp_path / 'tp2'}", *args],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, cwd=ROOT)
    assert main(["train", QUICKSTART, f"output_dir={tmp_path / 'single'}", *args]) == 0
    rows, single = _rows(tmp_path / "tp2"), _rows(tmp_path / "single")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [r["ppl"] for r in rows[:3]] == ["", "", ""]  # evaluation at step 4 only
    # float32 under two layouts: the same numbers up to reduction order.
    for row, reference in zip(rows, single, strict=True):
        assert abs(float(row["loss"]) - float(reference["loss"])) <= 1e-4, (row, reference)
    assert abs(float(rows[-1]["ppl"]) / float(single[-1]["ppl"]) - 1) <= 1e-4
    assert float(rows[-1]["exact_match"]) == float(single[-1]["exact_match"])
    # The export loads in transformers (its parameters are compared layout by layout, in float64,
    # in test_layouts: fp32 AdamW parameters are not comparable tightly).
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tp2" / "final")
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


def test_eval_command_under_torchrun_matches_one_process(tmp_path):
    import json

    args = [f"data.train_file={DATA}", f"data.eval_file={DATA}", "logging=[]"]
    assert main(["train", QUICKSTART, "max_steps=2", f"output_dir={tmp_path / 'run'}", *args]) == 0
    final = str(tmp_path / "run" / "final")
    assert main(["eval", final, QUICKSTART, *args, "--out", str(tmp_path / "single.json")]) == 0
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "collie", "eval", final, QUICKSTART, "tp_size=2", *args, "--out", str(tmp_path / "tp2.json")],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300, cwd=ROOT)
    single, tp2 = (json.loads((tmp_path / name).read_text()) for name in ("single.json", "tp2.json"))
    assert abs(tp2["ppl"] / single["ppl"] - 1) <= 1e-5
    assert len(tp2["samples"]) == len(single["samples"]) == 3  # (fp32 greedy tokens could tie: not compared)
