"""CoLLiE's monitors (`collie.utils.monitor`) and callbacks (`collie.callbacks`) on collie's
engine: real IO moves the IO monitors' columns, CoLLiE-signature callbacks save, select and
reload in tiny Trainer runs, and what collie does not support is refused in one line."""

import csv
import os
import socket
import threading
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama_config

import collie.callbacks
import collie.utils.monitor
from collie import CollieConfig, LlamaForCausalLM
from collie.callbacks import Callback, CheckpointCallback, HasMonitorCallback, LoadBestModelCallback, TopkSaver
from collie.callbacks._save_options import check_peft_only
from collie.data import CollieDatasetForTraining
from collie.evaluate import EvaluatorForPerplexity, PPLMetric
from collie.events import CallbackList
from collie.models.base import CollieModel
from collie.monitors.monitors import StepStats
from collie.trainer import Trainer
from collie.utils.monitor import (
                                  CPUMemoryMonitor,
                                  DiskIOMonitor,
                                  LossMonitor,
                                  NetworkIOMonitor,
                                  StepTimeMonitor,
                                  _MultiMonitors,
)

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]  # 4 steps an epoch
MIB = 1 << 20


def stats(step: int = 1) -> StepStats:
    return StepStats(step=step, epoch=0, loss=1.0, lr=1e-3, tokens=10, step_time_s=0.1, num_devices=1,
                     flops_per_token=None, device=torch.device("cpu"))


def make_trainer(out, callbacks=(), evaluate=False, monitors=None, **fields):
    """A tiny LLaMA run on 16 records (4 steps an epoch); `monitors` makes the monitors from its config."""
    config = CollieConfig(model_config=tiny_llama_config(), train_micro_batch_size=4, logging=fields.pop("logging", []),
                          seed=1, output_dir=str(out), **fields)
    config.optimizer.lr = 1e-2
    model = LlamaForCausalLM.from_config(config, seed=0)
    dataset = CollieDatasetForTraining(RECORDS)
    evaluators = [EvaluatorForPerplexity(model, config, dataset[:4], {"ppl": PPLMetric()})] if evaluate else []
    return Trainer(model, config, train_dataset=dataset, callbacks=list(callbacks), evaluators=evaluators,
                   monitors=monitors(config) if monitors else None)


class Weights(Callback):
    """step -> a copy of the weights after it (and the ppl of an evaluation at that step)."""

    def __init__(self):
        self.by_step, self.ppl = {}, {}

    def on_train_batch_end(self, trainer, loss):
        self.by_step[trainer.global_step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def on_evaluate_end(self, trainer, results):
        self.ppl[trainer.global_step] = results["ppl"]


def assert_same_weights(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, expected[name]), name


def write_synced(path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


# -- names ------------------------------------------------------------------
def test_every_collie_name_imports():
    for module in (collie.callbacks, collie.utils.monitor):
        for name in module.__all__:
            assert getattr(module, name) is not None, name
    assert collie.callbacks.Callback is collie.events.Callback
    assert collie.utils.monitor.BaseMonitor is collie.monitors.Monitor
    assert collie.callbacks.Callback().callback_name == "Callback"
    with pytest.raises(NotImplementedError, match="get_monitor: collie has no DeepSpeed monitor"):
        collie.utils.monitor.get_monitor(None)


# -- monitors ---------------------------------------------------------------
def test_disk_io_monitor_counts_a_written_file(tmp_path):
    monitor = DiskIOMonitor(None)
    monitor.start(torch.device("cpu"))
    write_synced(tmp_path / "blob", 16 * MIB)
    columns = monitor.step_columns(stats())
    assert columns["disk_write_bytes"] >= 16 * MIB
    assert columns["disk_write_bytes_per_s"] > 0
    assert columns["disk_read_bytes"] >= 0
    with pytest.raises(ValueError, match="disk 'no-such-disk': not one of"):
        DiskIOMonitor(None, disk="no-such-disk")


def test_network_io_monitor_counts_loopback_traffic():
    monitor = NetworkIOMonitor(None, interface="lo")
    monitor.start(torch.device("cpu"))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    connection, _ = server.accept()
    payload = b"x" * (8 * MIB)
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    received = 0
    while received < len(payload):
        received += len(connection.recv(MIB))
    sender.join()
    for s in (client, connection, server):
        s.close()
    columns = monitor.step_columns(stats())
    assert columns["net_sent_bytes"] >= 8 * MIB
    assert columns["net_recv_bytes"] >= 8 * MIB
    assert columns["net_sent_bytes_per_s"] > 0
    with pytest.raises(ValueError, match="interface 'no-such-nic': not one of"):
        NetworkIOMonitor(None, interface="no-such-nic")


def test_cpu_memory_monitor_sees_an_allocation():
    monitor = CPUMemoryMonitor(None)
    before = monitor.step_columns(stats())
    block = torch.ones(256 * MIB // 4)  # 256 MiB, touched
    after = monitor.step_columns(stats(2))
    assert after["cpu_mem_rss_gib"] - before["cpu_mem_rss_gib"] >= 0.2
    assert after["cpu_mem_used_gib"] > 0
    del block


def test_multi_monitors_merge_columns():
    group = _MultiMonitors([LossMonitor(None), StepTimeMonitor(None)])
    assert group.step_columns(stats()) == {"loss": 1.0, "step_time_s": 0.1}


class WriteAt(Callback):
    def __init__(self, path, step):
        self.path, self.step = path, step

    def on_train_batch_begin(self, trainer, batch):
        if trainer.global_step + 1 == self.step:
            write_synced(self.path, 4 * MIB)


def test_io_monitors_in_a_training_run_write_their_columns(tmp_path):
    def monitors(config):
        return [LossMonitor(config), DiskIOMonitor(config), NetworkIOMonitor(config), CPUMemoryMonitor(config)]

    trainer = make_trainer(tmp_path / "run", [WriteAt(tmp_path / "blob", step=2)], monitors=monitors, logging=["csv"],
                           max_steps=3)
    trainer.train()
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["1", "2", "3"]
    assert int(float(rows[1]["disk_write_bytes"])) >= 4 * MIB
    for row in rows:
        assert float(row["cpu_mem_rss_gib"]) > 0
        assert float(row["net_recv_bytes"]) >= 0


# -- the Callback base, CoLLiE's way -----------------------------------------
class CollieStyle(Callback):
    """Overrides as a CoLLiE user writes them: fewer arguments, state through on_save_checkpoint."""

    def __init__(self):
        self.epochs_ended, self.saved_models, self.restored = 0, 0, None

    def on_train_epoch_end(self, trainer):
        self.epochs_ended += 1

    def on_save_model(self, trainer):
        self.saved_models += 1

    def on_save_checkpoint(self, trainer):
        return {"epochs_ended": self.epochs_ended}

    def on_load_checkpoint(self, trainer, states):
        self.restored = states


def test_collie_style_overrides_receive_collie_arguments():
    callback = CollieStyle()
    callbacks = CallbackList([callback])
    callbacks.fire("on_train_epoch_end", "trainer", 0)
    callbacks.fire("on_save_model", "trainer", "/some/path")
    callbacks.fire("on_save_checkpoint", "trainer", "/some/path")  # its state goes by state_dicts instead
    callbacks.fire("on_load_checkpoint", "trainer", "/some/path")
    assert (callback.epochs_ended, callback.saved_models, callback.restored) == (1, 1, None)
    states = callbacks.state_dicts("trainer")
    assert states == [{"epochs_ended": 1}]
    fresh = CollieStyle()
    CallbackList([fresh]).load_state_dicts("trainer", states)
    assert fresh.restored == {"epochs_ended": 1}


def test_our_style_state_still_goes_through_state_dict():
    callback = CheckpointCallback("unused", every_n_batches=1)
    callback.kept = ["epoch_0-batch_1"]
    assert CallbackList([callback]).state_dicts("trainer") == [{"kept": ["epoch_0-batch_1"], "topk_saver": {"kept": []}}]


# -- CheckpointCallback with CoLLiE's signature --------------------------------
def test_checkpoint_callback_every_n_batches_and_last_reload_exactly(tmp_path):
    folder, weights = tmp_path / "ckpt", Weights()
    trainer = make_trainer(tmp_path / "run", [weights, CheckpointCallback(str(folder), every_n_batches=2, last=True,
                                                                          model_only=False)], train_epochs=2)
    trainer.train()
    names = {p.name for p in folder.iterdir() if p.is_dir()}
    assert names == {"epoch_0-batch_2", "epoch_0-batch_4", "epoch_1-batch_2", "epoch_1-batch_4", "last"}
    for name, step in (("epoch_0-batch_2", 2), ("epoch_1-batch_2", 6), ("last", 8)):
        fresh = make_trainer(tmp_path / f"fresh-{name}", train_epochs=2)
        fresh.load_checkpoint(str(folder / name))
        assert fresh.global_step == step
        assert_same_weights(fresh.model.state_dict(), weights.by_step[step])


def test_checkpoint_callback_every_n_epochs_max_and_hf_models(tmp_path):
    folder, weights = tmp_path / "ckpt", Weights()
    trainer = make_trainer(tmp_path / "run", [weights, CheckpointCallback(folder, every_n_epochs=1, max=2)],
                           train_epochs=3)
    trainer.train()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["epoch_2", "epoch_3"]  # max=2, last=False
    # model_only=True (CoLLiE's default): the model in Hugging Face format.
    assert_same_weights(CollieModel.from_pretrained(str(folder / "epoch_2")).state_dict(), weights.by_step[8])


def test_checkpoint_callback_accepts_collies_and_ours_names(tmp_path):
    callback = CheckpointCallback(tmp_path, every_n_steps=3, max_to_keep=1, model_only=False)
    trainer = make_trainer(tmp_path / "run", [callback], max_steps=6)
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("epoch_")) == ["epoch_1-batch_2"]


def test_checkpoint_callback_topk_keeps_the_best(tmp_path):
    folder, weights = tmp_path / "ckpt", Weights()
    callback = CheckpointCallback(folder, monitor="ppl", larger_better=False, topk=2)
    trainer = make_trainer(tmp_path / "run", [weights, callback], evaluate=True, train_epochs=2, eval_per_n_steps=2)
    trainer.train()
    best_two = sorted(weights.ppl, key=weights.ppl.get)[:2]
    assert sorted(best_two) != [2, 4]  # the two first evaluations are not the best: eviction shows
    kept = {p.name: p for p in folder.iterdir() if p.is_dir()}
    expected = {f"epoch_{(step - 1) // 4}-batch_{(step - 1) % 4 + 1}-ppl_{weights.ppl[step]}": step for step in best_two}
    assert kept.keys() == expected.keys()
    for name, step in expected.items():
        assert_same_weights(CollieModel.from_pretrained(str(kept[name])).state_dict(), weights.by_step[step])


def test_checkpoint_callback_refusals(tmp_path):
    with pytest.raises(ValueError, match="every_n_batches: must be an int >= 0"):
        CheckpointCallback(tmp_path, every_n_batches=-1)
    with pytest.raises(ValueError, match="protocol='s3' is not supported"):
        CheckpointCallback(tmp_path, protocol="s3")
    with pytest.raises(TypeError, match="unsupported arguments save_optimizer"):
        CheckpointCallback(tmp_path, save_optimizer=True)
    with pytest.raises(ValueError, match="topk is set but monitor is None"):
        CheckpointCallback(tmp_path, topk=2)
    with pytest.raises(ValueError, match="monitor is set but topk is 0"):
        TopkSaver(monitor="ppl")
    with pytest.raises(ValueError, match="peft_only=False is not supported"):
        check_peft_only("CheckpointCallback", False, SimpleNamespace(peft=object()))
    check_peft_only("CheckpointCallback", False, SimpleNamespace(peft=None))  # no PEFT: nothing to refuse


# -- LoadBestModelCallback, HasMonitorCallback ----------------------------------
@pytest.mark.parametrize("monitor, larger_better", [
    ("ppl_metric#ppl", True),  # CoLLiE names a result `metric#key`; collie finds it under `key`
    (lambda results: -results["ppl"], False),
])
def test_load_best_model_follows_larger_better(tmp_path, monitor, larger_better):
    folder, weights = tmp_path / "best", Weights()
    best = LoadBestModelCallback(str(folder), monitor=monitor, larger_better=larger_better,
                                 delete_after_train=larger_better)
    trainer = make_trainer(tmp_path / "run", [weights, best], evaluate=True, train_epochs=2, eval_per_n_steps=2)
    trainer.train()
    worst_ppl = max(weights.ppl, key=weights.ppl.get)  # the best by both monitors
    assert worst_ppl != 8  # not the last state, so reloading shows
    assert best.best_step == worst_ppl
    assert_same_weights(trainer.model.state_dict(), weights.by_step[worst_ppl])
    assert (folder / "best").exists() is not larger_better  # delete_after_train removes it


def test_load_best_model_needs_a_monitor(tmp_path):
    with pytest.raises(ValueError, match="LoadBestModelCallback: set monitor"):
        LoadBestModelCallback(str(tmp_path))


def test_has_monitor_callback_keeps_the_best_value():
    watcher = HasMonitorCallback("acc", larger_better=True)
    assert watcher.is_better_results({"acc": 0.5})
    assert not watcher.is_better_results({"acc": 0.4})
    assert watcher.is_better_monitor_value(0.9, keep_if_better=False)
    assert watcher.monitor_value == 0.5
    lower = HasMonitorCallback(lambda results: results.get("loss"), larger_better=False)
    assert lower.is_better_results({"loss": 2.0}) and lower.is_better_results({"loss": 1.0})
    assert not lower.is_better_results({"acc": 1.0})  # the function found no value: not better
    assert lower.monitor_value == 1.0
    with pytest.raises(KeyError, match="metric 'bleu' is not among the evaluation results \\(acc\\)"):
        HasMonitorCallback("bleu", larger_better=True).get_monitor_value({"acc": 0.5})
    with pytest.raises(ValueError, match="HasMonitorCallback: set monitor"):
        HasMonitorCallback(None, larger_better=True, must_have_monitor=True)
