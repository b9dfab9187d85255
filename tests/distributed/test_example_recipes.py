"""The example recipes under their own kind of parallelism, on the tiny fixtures in each dataset's
format: a few steps, then their metrics must be produced and in range."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# example, fixture, processes, layout, the metrics it reports
EXAMPLES = [
    ("alpaca", "fixture.json", 4, ["tp_size=2", "pp_size=2", "gradient_accumulation_steps=2"], ["ppl", "rougeL"]),
    ("classification", "fixture.jsonl", 2, ["zero_stage=3"], ["acc", "f", "pre", "rec"]),
    ("summarization", "fixture.jsonl", 2, ["tp_size=2"], ["rouge1", "rouge2", "rougeL"]),
    ("translation", "fixture.jsonl", 2, ["pp_size=2", "gradient_accumulation_steps=2"], ["bleu"]),
    ("further_pretraining", "fixture.jsonl", 2, ["tp_size=2"], ["ppl"]),
]
RANGES = {"ppl": (1.0, math.inf), "acc": (0.0, 1.0), "f": (0.0, 1.0), "pre": (0.0, 1.0), "rec": (0.0, 1.0),
          "rouge1": (0.0, 100.0), "rouge2": (0.0, 100.0), "rougeL": (0.0, 100.0), "bleu": (0.0, 100.0)}


@pytest.mark.parametrize("name, fixture, processes, layout, expected", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_runs_under_its_layout(tmp_path, name, fixture, processes, layout, expected):
    here = os.path.join(ROOT, "examples", name)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={processes}", os.path.join(here, "train.py"),
                             "--dataset", os.path.join(here, fixture), "--eval-limit", "4", "max_steps=2",
                             "logging=[]", "data.max_new_tokens=8", f"output_dir={tmp_path}", *layout],
                            capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("metrics: "))
    metrics = json.loads(line[len("metrics: "):])
    assert sorted(metrics) == sorted(expected)
    for key, value in metrics.items():
        low, high = RANGES[key]
        assert low <= value <= high, (key, value)
    assert os.path.isfile(tmp_path / "final" / "config.json")  # the trained model, in HF format
