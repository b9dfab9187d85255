"""A checkpoint that cannot be written (full disk, no permission) never costs the previous one:
the partial checkpoint is removed, `latest` stays, and the run stops with one line or, with
`checkpoint_errors: warn`, goes on and retries at the next interval."""

import errno
import os

import pytest
import torch.distributed.checkpoint as dcp

from collie.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def _fail_once(monkeypatch, failing_call: int, code: int = errno.ENOSPC) -> None:
    """The `failing_call`-th checkpoint write leaves a partial file, then fails as the OS would."""
    real_save, calls = dcp.save, [0]

    def save(state, checkpoint_id, **kwargs):
        calls[0] += 1
        if calls[0] == failing_call:
            os.makedirs(checkpoint_id, exist_ok=True)
            with open(os.path.join(checkpoint_id, "__0_0.distcp"), "w") as f:
                f.write("half")
            raise OSError(code, os.strerror(code))
        return real_save(state, checkpoint_id=checkpoint_id, **kwargs)

    monkeypatch.setattr(dcp, "save", save)


def _train(out, *extra) -> int:
    return main(["train", QUICKSTART, f"output_dir={out}", f"data.train_file={TRAIN_FILE}", "data.eval_file=null",
                 "max_steps=6", "checkpoint_every_n_steps=2", "logging=[csv]", *extra])


def _checkpoints(out) -> list[str]:
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_full_disk_stops_with_one_line_and_keeps_latest(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    _fail_once(monkeypatch, failing_call=2)
    assert _train(out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("collie: error: ")
    assert "step-4: the checkpoint could not be written (No space left on device); the partial one was removed" \
           in err
    assert _checkpoints(out) == ["latest", "step-2"]
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step-2"
    assert not os.path.exists(os.path.join(out, "final"))
    # The same command resumes from step 2 once the disk has room again.
    monkeypatch.undo()
    assert _train(out) == 0
    assert _checkpoints(out)[-1] == "step-6"


def test_warn_goes_on_and_retries_at_the_next_interval(tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "run")
    _fail_once(monkeypatch, failing_call=2, code=errno.EACCES)
    assert _train(out, "checkpoint_errors=warn") == 0
    assert _checkpoints(out) == ["latest", "step-2", "step-6"]
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step-6"
    assert any("step 4: " in r.message and "Permission denied" in r.message and "checkpoint_errors=warn" in r.message
               for r in caplog.records)


def test_bad_checkpoint_errors_value_names_the_field(tmp_path, capsys):
    assert _train(str(tmp_path / "run"), "checkpoint_errors=ignore") == 2
    assert "checkpoint_errors: 'ignore' is not one of stop, warn" in capsys.readouterr().err


@pytest.mark.parametrize("code", [errno.ENOSPC])
def test_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys, code):
    import collie.models.hf_io as hf_io

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "final" / "model.safetensors"))

    monkeypatch.setattr(hf_io, "save_file", full)
    assert _train(str(tmp_path / "run"), "checkpoint_every_n_steps=0") == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("model.safetensors: No space left on device")


def test_sigterm_finishes_the_step_checkpoints_and_returns(tmp_path, caplog):
    import signal

    from helpers import tiny_llama_config

    from collie import CollieConfig, LlamaForCausalLM
    from collie.data import CollieDatasetForTraining
    from collie.trainer import Callback, Trainer

    class SignalAtStep3(Callback):
        def __init__(self):
            self.ended = False

        def on_train_batch_end(self, trainer, loss):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_train_end(self, trainer):
            self.ended = True

    config = CollieConfig(model_config=tiny_llama_config(), logging=[], max_steps=10, output_dir=str(tmp_path))
    callback = SignalAtStep3()
    records = [{"tokens": [1 + (i * j) % 200 for j in range(8)]} for i in range(8)]
    trainer = Trainer(LlamaForCausalLM.from_config(config), config, train_dataset=CollieDatasetForTraining(records),
                      callbacks=[callback])
    previous = signal.getsignal(signal.SIGTERM)
    trainer.train()
    assert trainer.preempted and trainer.global_step == 3 and not callback.ended
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the caller's again
    assert _checkpoints(str(tmp_path)) == ["latest", "step-3"]
    assert any("preempted by SIGTERM after step 3: checkpoint " in r.message for r in caplog.records)
