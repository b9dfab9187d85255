"""Resume across layouts and after a killed rank (gloo, 2 processes)."""

import csv
import json
import os
import subprocess
import sys

import torch
from helpers import save_tiny_hf_model
from transformers import AutoModelForCausalLM

from collie import storage
from collie.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = [{"tokens": [(5 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(24)]


def _launch(mode, model_dir, records, out, *torchrun_args, output=None):
    # torchrun's defaults: restarted workers share its store (no TORCH_DISABLE_SHARE_RDZV_TCP_STORE).
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"}
    env["OMP_NUM_THREADS"] = "1"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    *torchrun_args, os.path.join(HERE, "resume_worker.py"), mode, model_dir, records, out],
                   check=True, env=env, timeout=300, stdout=output, stderr=subprocess.STDOUT)
    return json.loads(storage.read_text(f"{out}/{mode}.json"))


def _setup(tmp_path):
    sys.path.insert(0, HERE)
    model_dir = save_tiny_hf_model(str(tmp_path / "seed"))
    records = tmp_path / "records.json"
    records.write_text(json.dumps(RECORDS))
    return model_dir, str(records)


def test_resume_on_another_layout_and_bit_exact_dp2(tmp_path):
    from resume_worker import run

    model_dir, records = _setup(tmp_path)
    out = str(tmp_path / "runs")
    got = _launch("reshard", model_dir, records, out)
    assert len(got["tp2"]) == 6 and len(got["tp2_to_dp2"]) == 3
    assert max(abs(a - b) for a, b in zip(got["tp2_to_dp2"], got["tp2"][3:])) <= 1e-9
    assert got["dp2_resumed"] == got["dp2"][3:]  # bit-exact
    assert got["dp2_async"] == got["dp2"] and got["dp2_async_resumed"] == got["dp2"][3:]
    assert got["adalomo_dp2_resumed"] == got["adalomo_dp2"][3:]
    assert got["adalomo_dp2"] != got["dp2"]
    # The tp2 checkpoint also resumes in a single process (no process group at all).
    single = run(model_dir, records, str(tmp_path / "single"), ["dp_size=1", "train_micro_batch_size=2"],
                 resume_from=f"{out}/tp2/checkpoints/step-3")
    assert len(single) == 3 and max(abs(a - b) for a, b in zip(single, got["tp2"][3:])) <= 1e-9


def test_killed_ranks_restart_twice_and_resume(tmp_path):
    from resume_worker import run

    model_dir, records = _setup(tmp_path)
    out = str(tmp_path / "runs")
    got = _launch("kill", model_dir, records, out, "--max-restarts=2")
    # The last attempt resumed from step 4 (the last checkpoint before the kill at step 5).
    assert len(got["after_restart"]) == 2
    straight = run(model_dir, records, str(tmp_path / "straight"), ["dp_size=1", "train_micro_batch_size=2"])
    assert len(straight) == 6 and abs(got["after_restart"][-1] - straight[-1]) <= 1e-9
    with open(os.path.join(out, "killed", "metrics.csv")) as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows of steps the killed attempts logged were replaced, not duplicated


def test_killed_ranks_resume_from_object_storage(tmp_path, s3_bucket):
    """The model, output_dir and export in S3 (moto on 127.0.0.1): two kills, two restarts from
    the `latest` in the store, the uninterrupted run's final loss; transformers loads the export."""
    from resume_worker import run

    model_dir, records = _setup(tmp_path)
    storage.upload_dir(model_dir, f"{s3_bucket}/seed", last=("config.json",))
    out = f"{s3_bucket}/runs"
    got = _launch("object_store", f"{s3_bucket}/seed", records, out, "--max-restarts=2")
    assert len(got["after_restart"]) == 2
    straight = run(model_dir, records, str(tmp_path / "straight"), ["dp_size=1", "train_micro_batch_size=2"])
    assert abs(got["after_restart"][-1] - straight[-1]) <= 1e-9
    run_dir = f"{out}/killed"
    with storage.open_file(f"{run_dir}/metrics.csv", "r") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    assert storage.read_text(f"{run_dir}/checkpoints/latest").strip() == "step-6"
    # Each rank's files are there (no rank's upload replaced another's).
    assert {"rank-0.pt", "rank-1.pt", "trainer_state.json", ".metadata"} <= set(
        storage.listdir(f"{run_dir}/checkpoints/step-6"))
    # The export equals the last checkpoint converted (in the store, to the store).
    assert main(["convert", f"{run_dir}/checkpoints/step-6", "--to-hf", f"{out}/converted"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{run_dir}/final"), dtype=torch.float64)
    converted = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{out}/converted"), dtype=torch.float64)
    for (name, ours), (_, theirs) in zip(exported.state_dict().items(), converted.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_stalled_rank_becomes_an_error_and_a_restart(tmp_path):
    """A rank that stops answering (sleeps inside step 4's collectives) makes its peer fail after
    dist_timeout_s with one line naming the step; torchrun restarts the job, which finishes."""
    from resume_worker import run

    model_dir, records = _setup(tmp_path)
    out = str(tmp_path / "runs")
    log = tmp_path / "launch.log"
    with open(log, "w") as output:
        got = _launch("stall", model_dir, records, out, "--max-restarts=1", output=output)
    text = log.read_text()
    assert "PeerFailure: step 4: a collective timed out waiting for a peer (dist_timeout_s=5): " in text, text[-3000:]
    assert len(got["after_restart"]) == 4  # resumed from step 2
    straight = run(model_dir, records, str(tmp_path / "straight"), ["dp_size=1", "train_micro_batch_size=2"])
    assert abs(got["after_restart"][-1] - straight[-1]) <= 1e-9
