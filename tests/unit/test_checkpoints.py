"""Checkpoint callbacks, NaN handling, corrupted/mismatched checkpoints, kill during save, convert."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import tiny_llama_config
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from transformers import AutoModelForCausalLM

from collie import CollieConfig, LlamaForCausalLM
from collie.convert import dcp_to_hf, hf_to_dcp
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer
from collie.trainer.checkpoint import CheckpointError, is_corruption
from collie.trainer.checkpoint_callbacks import (
    CheckpointCallback,
    EarlyStoppingCallback,
    LoadBestModelCallback,
    TopKCheckpointCallback,
)

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]
HELPERS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


class Snapshots(Callback):
    """step -> (ppl, a copy of the weights) at each evaluation."""

    def __init__(self):
        self.by_step = {}

    def on_evaluate_end(self, trainer, results):
        self.by_step[trainer.global_step] = (results["ppl"], {k: v.clone() for k, v in
                                                              trainer.model.state_dict().items()})


def make_trainer(out, callbacks=(), evaluate=False, train_fn=None, **fields):
    config = CollieConfig(model_config=tiny_llama_config(**fields.pop("shape", {})), train_micro_batch_size=4,
                          logging=[], seed=1, output_dir=str(out), **fields)
    config.optimizer.lr = 1e-2
    model = LlamaForCausalLM.from_config(config, seed=0)
    dataset = CollieDatasetForTraining(RECORDS)
    evaluators = [EvaluatorForPerplexity(model, config, dataset[:4], {"ppl": PPLMetric()})] if evaluate else []
    return Trainer(model, config, train_dataset=dataset, callbacks=list(callbacks), evaluators=evaluators,
                   train_fn=train_fn)


def test_checkpoint_callback_epochs_and_max_to_keep(tmp_path):
    trainer = make_trainer(tmp_path, [CheckpointCallback(every_n_epochs=1, max_to_keep=2)], train_epochs=3)
    trainer.train()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == ["step-12", "step-8"]
    assert (root / "latest").read_text().strip() == "step-12"


def test_top_k_keeps_the_best_models(tmp_path):
    top, snapshots = TopKCheckpointCallback("ppl", mode="min", top_k=2), Snapshots()
    trainer = make_trainer(tmp_path, [snapshots, top], evaluate=True, train_epochs=4, eval_per_n_steps=2)
    trainer.train()
    kept = sorted(p.name for p in (tmp_path / "best").iterdir())
    assert len(kept) == 2 and [item[2] for item in top.kept] == [str(tmp_path / "best" / n) for n in
                                                                 sorted(kept, key=lambda n: -int(n[5:]))]
    values = [item[0] for item in top.kept]
    assert values == sorted(values)
    # The best directory holds the weights the model had at that evaluation, in HF format.
    value, step, path = top.kept[0]
    assert value == min(ppl for ppl, _ in snapshots.by_step.values()) == snapshots.by_step[step][0]
    assert AutoModelForCausalLM.from_pretrained(path).num_parameters() > 0
    saved = CollieModel.from_pretrained(path).state_dict()
    assert saved.keys() == snapshots.by_step[step][1].keys()
    for name, tensor in saved.items():
        assert torch.equal(tensor, snapshots.by_step[step][1][name]), name


def test_load_best_model_restores_the_best_weights(tmp_path):
    recorder = Snapshots()
    snapshots = recorder.by_step
    # A learning rate that diverges after a few steps, so the best evaluation is not the last.
    best = LoadBestModelCallback("ppl")
    trainer = make_trainer(tmp_path, [recorder, best], evaluate=True, train_epochs=5, eval_per_n_steps=2)
    trainer.optimizer.param_groups[0]["lr"] = 0.3
    trainer.lr_scheduler.base_lrs = [0.3]
    trainer.train()
    best_step = min(snapshots, key=lambda s: snapshots[s][0])
    assert best.best_step == best_step
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, snapshots[best_step][1][name]), name


def test_early_stopping(tmp_path):
    stopper = EarlyStoppingCallback("ppl", patience=2, min_delta=1e9)  # no evaluation can improve by 1e9
    trainer = make_trainer(tmp_path, [stopper], evaluate=True, train_epochs=10, eval_per_n_steps=1)
    trainer.train()
    assert trainer.global_step == 3  # first evaluation sets the best, two more without improvement
    with pytest.raises(KeyError, match="metric 'bleu' is not among the evaluation results \\(ppl\\)"):
        make_trainer(tmp_path / "x", [EarlyStoppingCallback("bleu")], evaluate=True, max_steps=1,
                     eval_per_n_steps=1).train()


def _nan_at_step_3(trainer, batch):
    loss = trainer.loss_fn(trainer.model(batch["input_ids"]).logits, batch["labels"])
    return loss * float("nan") if trainer.global_step == 2 else loss


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, train_fn=_nan_at_step_3, max_steps=6, checkpoint_every_n_steps=2)
    with pytest.raises(FloatingPointError, match="step 3: the loss is nan; training stopped"):
        trainer.train()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert not (tmp_path / "checkpoints" / "step-3").exists()


def test_nan_loss_skip_policy_leaves_the_weights(tmp_path):
    weights = {}

    class Watch(Callback):
        def on_train_batch_end(self, trainer, loss):
            weights[trainer.global_step] = [p.detach().clone() for p in trainer.model.parameters()]

    trainer = make_trainer(tmp_path, [Watch()], train_fn=_nan_at_step_3, max_steps=4, nan_policy="skip")
    trainer.train()
    assert trainer.global_step == 4
    assert all(torch.equal(a, b) for a, b in zip(weights[2], weights[3]))
    assert not all(torch.equal(a, b) for a, b in zip(weights[3], weights[4]))


def test_resume_from_another_model_shape_and_corrupted_files(tmp_path):
    make_trainer(tmp_path, max_steps=2, checkpoint_every_n_steps=2).train()
    ckpt = tmp_path / "checkpoints" / "step-2"
    other = make_trainer(tmp_path / "other", max_steps=4, shape={"intermediate_size": 96})
    with pytest.raises(CheckpointError, match=r"mlp.\w+_proj.weight has shape .* checkpoint of another model"):
        other.train(resume_from=str(ckpt))
    data_file = next(ckpt.glob("*.distcp"))
    data_file.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load the checkpoint .* incomplete or corrupted"):
        make_trainer(tmp_path / "again", max_steps=4).train(resume_from=str(ckpt))
    with pytest.raises(CheckpointError) as error:
        make_trainer(tmp_path / "again", max_steps=4).train(resume_from=str(ckpt))
    assert error.value.__cause__ is not None  # the original error stays reachable
    (ckpt / "trainer_state.json").write_text("{")
    with pytest.raises(CheckpointError, match="trainer_state.json: unreadable"):
        make_trainer(tmp_path / "again2", max_steps=4).train(resume_from=str(ckpt))


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {unit!r})
    import torch.distributed.checkpoint as dcp
    from test_checkpoints import make_trainer
    real_save = dcp.save
    def save_then_die(state, checkpoint_id, **kw):
        real_save(state, checkpoint_id=checkpoint_id, **kw)
        if str(checkpoint_id).endswith("step-4.tmp"):
            os.kill(os.getpid(), signal.SIGKILL)  # data written, rename and marker not yet
    dcp.save = save_then_die
    make_trainer({out!r}, max_steps=6, train_epochs=2, checkpoint_every_n_steps=2).train()
""")


def test_kill_during_save_keeps_latest_on_the_previous_checkpoint(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    script = KILL_SCRIPT.format(tests=HELPERS, unit=here, out=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            capture_output=True, timeout=120)
    assert result.returncode == -9
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-2"
    assert (root / "step-4.tmp").is_dir() and not (root / "step-4").exists()
    resumed, straight = Losses(), Losses()
    make_trainer(tmp_path, [resumed], max_steps=6, train_epochs=2, checkpoint_every_n_steps=2).train()
    make_trainer(tmp_path / "straight", [straight], max_steps=6, train_epochs=2).train()
    assert len(straight.values) == 6
    assert resumed.values == straight.values[2:]
    assert (root / "latest").read_text().strip() == "step-6" and not (root / "step-4.tmp").exists()


def test_convert_round_trip(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, checkpoint_every_n_steps=2)
    trainer.train()
    dcp_to_hf(str(tmp_path / "checkpoints" / "step-2"), str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, trainer.model(ids).logits)

    hf_to_dcp(str(tmp_path / "hf"), str(tmp_path / "warm"))
    fresh = make_trainer(tmp_path / "fresh", max_steps=1)
    fresh.load_checkpoint(str(tmp_path / "warm"))
    assert fresh.global_step == 0
    for (name, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="not a collie checkpoint"):
        dcp_to_hf(str(tmp_path / "hf"), str(tmp_path / "nope"))


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), MemoryError(), TimeoutError("storage")])
def test_errors_that_are_not_corruption_keep_their_own_name(tmp_path, monkeypatch, error):
    make_trainer(tmp_path, max_steps=2, checkpoint_every_n_steps=2).train()
    ckpt = str(tmp_path / "checkpoints" / "step-2")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(FileSystemReader, "read_metadata", fail)
    with pytest.raises(type(error)):
        make_trainer(tmp_path / "again", max_steps=4).train(resume_from=ckpt)


def test_what_counts_as_corruption():
    assert is_corruption(EOFError()) and is_corruption(FileNotFoundError(2, "missing"))
    assert is_corruption(RuntimeError("PytorchStreamReader failed reading zip archive"))
    assert not is_corruption(PermissionError(13, "denied")) and not is_corruption(TimeoutError())
    assert not is_corruption(torch.OutOfMemoryError("CUDA out of memory")) and not is_corruption(MemoryError())
    assert is_corruption(CheckpointException("load", {0: (EOFError(), None), 1: (ValueError(), None)}))
    assert not is_corruption(CheckpointException("load", {0: (EOFError(), None), 1: (PermissionError(), None)}))
