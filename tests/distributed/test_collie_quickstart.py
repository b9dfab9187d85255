"""CoLLiE's README quickstart, run as written on 2 processes: the model is named by its hub id
(`fnlp/moss-moon-003-sft`, found in a local Hugging Face cache that holds a tiny MOSS-moon-003 in
its published layout), LOMO, the DeepSpeed settings (fp16, ZeRO-3, CPU offload, a CSV monitor in
./ds_logs/), tp_size=2, five monitors, both evaluators and a Gradio page. Only the dataset's size
and the page's port change. The page answers while the model trains, and the loss the CSV
monitor wrote falls."""

import csv
import glob
import os
import subprocess
import sys
import time

import pytest
from gradio_client import Client
from helpers import free_port, hub_cache_with

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "collie_api", "finetune_moss_for_training.py")
HUB_ID = "fnlp/moss-moon-003-sft"


def test_the_seed_quickstart_trains_logs_to_ds_logs_and_answers_on_its_page(tmp_path):
    cache = tmp_path / "hf"
    hub_cache_with(cache, HUB_ID, "moss")
    port = free_port()
    script = open(EXAMPLE).read()
    for old, new in (("range(10000)", "range(1760)"), ("GradioProvider(tokenizer)", f"GradioProvider(tokenizer, port={port})")):
        assert old in script
        script = script.replace(old, new)
    (tmp_path / "quickstart.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "quickstart.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        answer = ask_the_page(f"http://127.0.0.1:{port}/", run)
        output, _ = run.communicate(timeout=600)
    finally:
        run.kill()
    assert run.returncode == 0, output[-3000:]
    text, step = answer
    assert step.startswith("answered by the weights of step ") and not text.startswith("error"), answer

    (metrics,) = glob.glob(str(tmp_path / "ds_logs" / "adan*" / "metrics.csv"))
    rows = list(csv.DictReader(open(metrics)))
    losses = [float(row["loss"]) for row in rows if row.get("loss")]
    assert len(losses) == 1760 // 16
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10])
    evaluated = [row for row in rows if row.get("ppl")]
    assert [int(row["step"]) for row in evaluated] == [100, 110]  # eval_per_n_steps=100 and the epoch's end
    # What collie changed or will not do is said once, on the main rank.
    assert output.count("fp16 mixed precision") == 1 and output.count("trust_remote_code") == 1
    assert "fp16 mixed precision" in output and "trust_remote_code" in output


def ask_the_page(url: str, run: subprocess.Popen) -> tuple[str, str]:
    """The page's answer to a prompt, asked as soon as the page is up (training is then running)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if run.poll() is not None:
            pytest.fail(f"the run ended before its page answered:\n{run.stdout.read()[-3000:]}")
        try:
            client = Client(url, verbose=False)
        except Exception:  # not listening yet
            time.sleep(1)
            continue
        return tuple(client.predict("Collie is a python package for ", 8, 0.0, 1.0, api_name="/answer"))
    pytest.fail("the Gradio page never came up")
