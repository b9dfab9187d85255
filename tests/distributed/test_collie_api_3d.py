"""CoLLiE's one-sentence overfitting example under full 3D parallelism (tp 2 × pp 2 × dp 2 on 8
processes) equals one process, in float64, to 1e-9: the per-step losses its CSV monitor writes,
what its generation evaluator decodes between steps, and the weights `save_model` writes.

The example runs as written (its hub id resolves to a tiny LLaMA in a local Hugging Face cache)
with these substitutions only: float64 instead of fp16, a 16-sample dataset (4 steps), an
evaluation every 2 steps of 6 new tokens; and, for the one-process reference, tp = pp = dp = 1
with 2 micro-batches per step, so both consume the same 4 samples a step.
"""

import csv
import glob
import os
import re
import subprocess
import sys

import torch
from helpers import hub_cache_with
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "collie_api", "one_sentence_overfitting", "3d_parallelism.py")
HUB_ID = "huggyllama/llama-7b"
TOLERANCE = 1e-9  # float64: reduction-order rounding is ~1e-15, a real difference is far larger
FLOAT64_AND_SIZES = (('"fp16": {"enabled": True}', '"fp16": {"enabled": False}'),
                     ("config.use_flash = False", 'config.use_flash = False\nconfig.param_dtype = "float64"'),
                     ("range(12800)", "range(16)"), ("config.eval_per_n_steps = 20", "config.eval_per_n_steps = 2"),
                     ("max_new_tokens=32", "max_new_tokens=6"))
ONE_PROCESS = (("config.tp_size = 2", "config.tp_size = 1"), ("config.pp_size = 2", "config.pp_size = 1"),
               ("config.dp_size = 2", "config.dp_size = 1"),
               ("config.gradient_accumulation_steps = 1", "config.gradient_accumulation_steps = 2"))


def test_3d_parallel_overfitting_equals_one_process_in_float64(tmp_path):
    cache = tmp_path / "hf"
    hub_cache_with(cache, HUB_ID, "llama")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    single = run_example(tmp_path / "single", FLOAT64_AND_SIZES + ONE_PROCESS, [sys.executable], env)
    parallel = run_example(tmp_path / "3d", FLOAT64_AND_SIZES, [sys.executable, "-m", "torch.distributed.run",
                                                                "--standalone", "--nproc_per_node=8"], env)
    # CoLLiE's pipeline ran one micro-batch per step; collie runs it (1f1b with fewer
    # micro-batches than stages is GPipe's order).
    assert "running gpipe" in parallel["output"]

    assert len(single["losses"]) == 4 and single["losses"][-1] < single["losses"][0]
    assert max(abs(a - b) for a, b in zip(parallel["losses"], single["losses"], strict=True)) <= TOLERANCE
    # The evaluator decoded after steps 2 and 4 under 3D (one prompt on two data-parallel
    # ranks) what one process decoded.
    assert len(single["decoded"]) == 2 and parallel["decoded"] == single["decoded"]

    assert parallel["weights"].keys() == single["weights"].keys()
    for name, tensor in parallel["weights"].items():
        assert tensor.dtype == torch.float64, name
        assert (tensor - single["weights"][name]).abs().max() <= TOLERANCE, name


def run_example(where, substitutions, launcher: list, env: dict) -> dict:
    """Run the example with `substitutions` in `where`: its losses (from the CSV its monitors
    wrote under ./ds_logs/), the lines its DecodeMetric logged, and the weights it saved."""
    script = open(EXAMPLE).read()
    for old, new in substitutions:
        assert old in script, old
        script = script.replace(old, new)
    where.mkdir()
    (where / "example.py").write_text(script)
    run = subprocess.run([*launcher, "example.py"], cwd=where, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    (metrics,) = glob.glob(str(where / "ds_logs" / "3d*" / "metrics.csv"))
    losses = [float(row["loss"]) for row in csv.DictReader(open(metrics))]
    return {"output": output, "losses": losses, "decoded": re.findall(r"^decode: (.*)$", output, re.MULTILINE),
            "weights": load_file(where / "llama-3d" / "model.safetensors")}
