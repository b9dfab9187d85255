"""Preemption: SIGUSR1 (or SIGTERM) to one rank of a 2-process `collie train` makes every rank
finish the step, checkpoint and exit 0 with a line saying where; the same command resumes, and
the per-step losses equal an uninterrupted run's exactly."""

import csv
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def _command(out: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "collie",
            "train", QUICKSTART, f"output_dir={out}", f"data.train_file={TRAIN_FILE}", "data.eval_file=null",
            "max_steps=60", "checkpoint_every_n_steps=0", "logging=[csv]", "train_micro_batch_size=4"]


def _losses(out: str) -> list[str]:
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return [row["loss"] for row in csv.DictReader(f)]


def _rows(out: str) -> int:
    try:
        return len(_losses(out))
    except (FileNotFoundError, KeyError):
        return 0


ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.parametrize("signum", [signal.SIGUSR1])
def test_signal_to_one_rank_checkpoints_exits_0_and_resumes_exactly(tmp_path, signum):
    reference = str(tmp_path / "reference")
    subprocess.run(_command(reference), check=True, env=ENV, timeout=300, capture_output=True)

    out = str(tmp_path / "preempted")
    launcher = subprocess.Popen(_command(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _rows(out) < 3 and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "collie" in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    workers[-1].send_signal(signum)  # one rank only: the other learns it after the step
    output, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 0, output[-3000:]
    stopped_at = _rows(out)
    assert 3 <= stopped_at < 60
    line = f"preempted by {signal.Signals(signum).name} after step {stopped_at}: checkpoint "
    assert line in output and "run the same command to resume" in output, output[-3000:]
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == f"step-{stopped_at}"
    assert not os.path.exists(os.path.join(out, "final"))

    subprocess.run(_command(out), check=True, env=ENV, timeout=300, capture_output=True)
    assert _losses(out) == _losses(reference)
    assert os.path.isdir(os.path.join(out, "final"))
