"""Asynchronous checkpoints: training goes on while the tensors are written; resume is the same
as from a synchronous checkpoint; a kill during the background write leaves `latest` on the
previous checkpoint."""

import os
import subprocess
import sys
import textwrap

from helpers import tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.trainer import Callback, Trainer

RECORDS = [{"tokens": [1 + (3 * i + 5 * j) % 200 for j in range(6 + i % 5)]} for i in range(24)]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def _run(out, max_steps, **fields):
    config = CollieConfig(model_config=tiny_llama_config(), logging=[], max_steps=max_steps, output_dir=str(out),
                          checkpoint_every_n_steps=2, train_micro_batch_size=2, **fields)
    losses = Losses()
    Trainer(LlamaForCausalLM.from_config(config), config, train_dataset=CollieDatasetForTraining(RECORDS),
            callbacks=[losses]).train()
    return losses.values


def _checkpoints(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_async_checkpoints_resume_like_sync_ones(tmp_path):
    straight = _run(tmp_path / "straight", 8)
    first = _run(tmp_path / "async", 5, checkpoint_async=True)
    assert first == straight[:5]
    # Every checkpoint completed, the last one (step 5, at the end) included, before train() returned.
    assert _checkpoints(tmp_path / "async") == ["latest", "step-2", "step-4", "step-5"]
    with open(tmp_path / "async" / "checkpoints" / "latest") as f:
        assert f.read().strip() == "step-5"
    resumed = _run(tmp_path / "async", 8, checkpoint_async=True)
    assert resumed == straight[5:]


KILLED_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from test_async_checkpoint import _run
    slow_write = FileSystemWriter.write_data
    def write_data(self, plan, planner):
        if "step-4" in str(self.path):
            time.sleep(60)  # the background write of step 4 is still going when the process dies
        return slow_write(self, plan, planner)
    FileSystemWriter.write_data = write_data

    import test_async_checkpoint
    class KillAtStep5(test_async_checkpoint.Losses):
        def on_train_batch_end(self, trainer, loss):
            if trainer.global_step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
    test_async_checkpoint.Losses = KillAtStep5
    _run({out!r}, 8, checkpoint_async=True)
""")


def test_kill_during_background_write_keeps_latest(tmp_path):
    out = str(tmp_path / "run")
    script = KILLED_DURING_WRITE.format(tests=os.path.dirname(os.path.dirname(__file__)) + "/unit", out=out)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == -9, result.stderr[-2000:]
    assert _checkpoints(out) == ["latest", "step-2", "step-4.tmp"]
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step-2"
    straight = _run(tmp_path / "straight", 8)
    assert _run(out, 8, checkpoint_async=True) == straight[2:]  # resumed from step 2
    assert "step-4.tmp" not in _checkpoints(out)
