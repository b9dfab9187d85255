"""The monitors people look at: loss.png (redrawn at each checkpoint and at the end) and a W&B
run (offline mode: its files under output_dir)."""

import glob
import os

import pytest
from helpers import tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.monitors.plot_sink import LossCurveSink
from collie.trainer import Callback, Trainer

RECORDS = [{"tokens": [1 + (3 * i + 5 * j) % 200 for j in range(6 + i % 5)]} for i in range(16)]
PNG = b"\x89PNG\r\n\x1a\n"


def _trainer(out, logging, callbacks=()):
    config = CollieConfig(model_config=tiny_llama_config(), logging=logging, max_steps=4, output_dir=str(out),
                          checkpoint_every_n_steps=2, eval_per_n_steps=2, train_micro_batch_size=4)
    dataset = CollieDatasetForTraining(RECORDS)
    model = LlamaForCausalLM.from_config(config)
    return Trainer(model, config, train_dataset=dataset, callbacks=list(callbacks),
                   evaluators=[EvaluatorForPerplexity(model, config, dataset[:4], {"ppl": PPLMetric()})])


def test_loss_png_at_each_checkpoint_and_at_the_end(tmp_path):
    seen = []

    class AtCheckpoint(Callback):
        def on_save_checkpoint(self, trainer, path):
            with open(tmp_path / "loss.png", "rb") as f:
                seen.append((trainer.global_step, f.read(8)))

    trainer = _trainer(tmp_path, ["csv", "plot"], [AtCheckpoint()])
    trainer.train()
    assert seen[:2] == [(2, PNG), (4, PNG)]
    sink = next(s for s in trainer.sinks if isinstance(s, LossCurveSink))
    series = sink.series()
    assert series["loss"][0] == [1, 2, 3, 4] and series["ppl"][0] == [2, 4]
    assert "lr" not in series and "step" not in series


def test_resumed_curve_continues_from_metrics_csv(tmp_path):
    _trainer(tmp_path, ["csv", "plot"]).train()
    trainer = _trainer(tmp_path, ["csv", "plot"])
    trainer.config.max_steps = 6
    trainer.train()
    sink = next(s for s in trainer.sinks if isinstance(s, LossCurveSink))
    assert sink.series()["loss"][0] == [1, 2, 3, 4, 5, 6]


def test_wandb_offline_run_writes_its_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _trainer(tmp_path, ["wandb"]).train()
    runs = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(runs) == 1 and os.path.getsize(runs[0]) > 0


def test_wandb_missing_is_one_line(tmp_path, monkeypatch):
    import sys

    from collie.config import ConfigError

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"logging: 'wandb' needs the `wandb` package \(pip install wandb\)"):
        _trainer(tmp_path, ["wandb"]).train()
