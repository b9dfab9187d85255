"""`output_dir: s3://…` (any fsspec URL): checkpoints, `latest`, metrics, loss.png, the export and
resume all live in the object store; model sources and `collie convert` destinations may be URLs
too. Against a real S3 HTTP server (moto) on 127.0.0.1."""

import csv
import errno
import os

import torch
import torch.distributed.checkpoint as dcp
from transformers import AutoModelForCausalLM

from collie import storage
from collie.cli import main
from collie.trainer import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def _train(out, *extra) -> int:
    return main(["train", QUICKSTART, f"output_dir={out}", f"data.train_file={TRAIN_FILE}", "data.eval_file=null",
                 "max_steps=6", "checkpoint_every_n_steps=2", "logging=[csv,plot]", *extra])


def _losses(metrics_csv: str) -> list[tuple[int, str]]:
    with storage.open_file(metrics_csv, "r") as f:
        return [(int(row["step"]), row["loss"]) for row in csv.DictReader(f)]


def _fail_second_save(monkeypatch) -> None:
    """The second checkpoint write leaves a partial object in the store, then the store refuses."""
    real_save, calls = dcp.save, [0]

    def save(state, checkpoint_id, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            storage.write_text(f"{checkpoint_id}/__0_0.distcp", "half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(state, checkpoint_id=checkpoint_id, **kwargs)

    monkeypatch.setattr(dcp, "save", save)


def test_a_run_in_s3_survives_a_failed_checkpoint_resumes_and_exports(s3_bucket, tmp_path, monkeypatch):
    run = f"{s3_bucket}/run"
    _fail_second_save(monkeypatch)
    assert _train(run) == 2
    # The failed checkpoint's objects are gone; `latest` (the marker object) still names step 2.
    assert storage.listdir(f"{run}/checkpoints") == ["latest", "step-2"]
    assert checkpoint.latest(run) == f"{run}/checkpoints/step-2"
    assert not storage.exists(f"{run}/final")
    monkeypatch.undo()
    assert _train(run) == 0  # the same command resumes from the store
    assert checkpoint.latest(run) == f"{run}/checkpoints/step-6"
    assert {"config.yaml", "metrics.csv", "loss.png", "final", "checkpoints"} <= set(storage.listdir(run))

    local = str(tmp_path / "local")
    assert _train(local) == 0
    # Steps 3–4 the failed attempt logged were replaced, not duplicated; resume is exact.
    assert _losses(f"{run}/metrics.csv") == _losses(os.path.join(local, "metrics.csv"))
    assert [s for s, _ in _losses(f"{run}/metrics.csv")] == [1, 2, 3, 4, 5, 6]

    # transformers loads the export once it is copied back; it holds the local run's weights.
    exported = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{run}/final"))
    reference = AutoModelForCausalLM.from_pretrained(os.path.join(local, "final"))
    for (name, ours), (_, theirs) in zip(exported.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_convert_generate_and_from_pretrained_take_urls(s3_bucket, tmp_path):
    local = str(tmp_path / "local")
    assert _train(local, "max_steps=2") == 0
    storage.upload_dir(os.path.join(local, "checkpoints", "step-2"), f"{s3_bucket}/ckpt")
    storage.upload_dir(os.path.join(local, "final"), f"{s3_bucket}/final", last=("config.json",))
    # checkpoint in the store → HF export in the store
    assert main(["convert", f"{s3_bucket}/ckpt", "--to-hf", f"{s3_bucket}/converted"]) == 0
    converted = AutoModelForCausalLM.from_pretrained(storage.local_copy(f"{s3_bucket}/converted"))
    reference = AutoModelForCausalLM.from_pretrained(os.path.join(local, "final"))
    for (name, ours), (_, theirs) in zip(converted.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    # a model in the store trains from there (a warm start from `final`) and generates
    assert main(["generate", f"{s3_bucket}/final", "Hello", "--max-new-tokens", "4"]) == 0
    assert _train(str(tmp_path / "again"), f"model={s3_bucket}/final", "init_shape=null", "max_steps=1") == 0
    with open(tmp_path / "again" / "config.yaml") as f:
        assert f"model: {s3_bucket}/final" in f.read()  # the run records where its model lives


def test_a_download_is_cached_until_the_remote_directory_changes(s3_bucket, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("one")
    storage.upload_dir(str(source), f"{s3_bucket}/dir")
    first = storage.local_copy(f"{s3_bucket}/dir")
    assert storage.local_copy(f"{s3_bucket}/dir") == first
    storage.write_text(f"{s3_bucket}/dir/a.txt", "two")
    second = storage.local_copy(f"{s3_bucket}/dir")
    assert second != first and open(os.path.join(second, "a.txt")).read() == "two"


def test_missing_remote_model_and_unknown_protocol_are_one_line(s3_bucket, capsys):
    assert main(["generate", f"{s3_bucket}/nothing-here", "Hello"]) == 2
    assert f"{s3_bucket}/nothing-here: no such directory in the object store" in capsys.readouterr().err
    assert main(["generate", "nosuchproto://bucket/model", "Hello"]) == 2
    assert "nosuchproto://bucket/model: no fsspec file system for nosuchproto://" in capsys.readouterr().err


def test_file_urls_are_local_paths(tmp_path):
    assert not storage.is_url(f"file://{tmp_path}") and storage.is_url("s3://bucket/x")
    storage.write_text(f"file://{tmp_path}/marker", "x")
    assert (tmp_path / "marker").read_text() == "x" and storage.local_copy(f"file://{tmp_path}") == str(tmp_path)


def test_a_checkpoint_in_the_store_is_never_overwritten_in_place(s3_bucket, tmp_path):
    """Object stores cannot rename: saving again under the name `latest` holds writes a fresh
    checkpoint and moves `latest` to it, so the old one is whole until then."""
    from helpers import save_tiny_hf_model

    from collie import CollieConfig
    from collie.data import CollieDatasetForTraining
    from collie.models.base import CollieModel
    from collie.trainer import Trainer

    model_dir = save_tiny_hf_model(str(tmp_path / "tiny"))
    config = CollieConfig.load(None, ["max_steps=1", "logging=[]", f"output_dir={s3_bucket}/run"])
    trainer = Trainer(CollieModel.from_pretrained(model_dir, config=config), config,
                      train_dataset=CollieDatasetForTraining([{"tokens": [1, 2, 3, 4]}] * 4))
    trainer.train()
    first = trainer.save_checkpoint()
    second = trainer.save_checkpoint()
    assert first == f"{s3_bucket}/run/checkpoints/step-1" and second.startswith(first + "-")
    assert checkpoint.latest(f"{s3_bucket}/run") == second
    assert {"trainer_state.json", "rank-0.pt", ".metadata"} <= set(storage.listdir(first))
    trainer.load_checkpoint(second)
