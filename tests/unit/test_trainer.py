import math

import pytest
import torch
from helpers import tiny_llama_config

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining
from collie.trainer import Callback, Trainer

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]


def _trainer(tmp_path=None, records=RECORDS, **fields):
    settings = dict(train_micro_batch_size=4, gradient_accumulation_steps=1, logging=[], seed=1,
                    output_dir=str(tmp_path) if tmp_path else None)
    optimizer = fields.pop("optimizer", {})
    dtype = fields.pop("dtype", torch.float32)
    settings.update(fields)
    config = CollieConfig(model_config=tiny_llama_config(), **settings)
    config.optimizer.lr = 1e-2
    for key, value in optimizer.items():
        setattr(config.optimizer, key, value)
    model = LlamaForCausalLM.from_config(config, seed=0, dtype=dtype)
    return Trainer(model, config, train_dataset=CollieDatasetForTraining(records)), model


class Recorder(Callback):
    def __init__(self):
        self.events, self.losses = [], []

    def on_train_begin(self, trainer):
        self.events.append("train_begin")

    def on_train_epoch_end(self, trainer, epoch):
        self.events.append(f"epoch_end:{epoch}")

    def on_train_batch_end(self, trainer, loss):
        self.losses.append(loss)

    def on_evaluate_end(self, trainer, results):
        self.events.append(f"eval:{sorted(k for k in results if k != 'samples')}")

    def on_train_end(self, trainer):
        self.events.append("train_end")


def test_loss_falls_and_events_fire():
    recorder = Recorder()
    trainer, _ = _trainer(train_epochs=6, eval_per_n_epochs=3)
    trainer.callbacks.callbacks.append(recorder)
    from collie.evaluate import EvaluatorForPerplexity, PPLMetric

    trainer.evaluators.append(EvaluatorForPerplexity(trainer.model, trainer.config, trainer.train_dataset[:8],
                                                     {"ppl": PPLMetric()}))
    for e in trainer.evaluators:
        e.runtime = trainer.runtime
    trainer.train()
    assert len(recorder.losses) == 24
    assert recorder.losses[-1] < 0.6 * recorder.losses[0]
    assert recorder.events[0] == "train_begin" and recorder.events[-1] == "train_end"
    assert recorder.events.count("eval:['ppl']") == 2 and "epoch_end:5" in recorder.events


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_gradient_accumulation_is_equivalent(optimizer):
    # Uneven lengths: equivalence needs the token-weighted normaliser, not a mean of means.
    # float64, so that 1e-6 measures the method and not fp32 summation order.
    a, model_a = _trainer(train_micro_batch_size=4, gradient_accumulation_steps=1, max_steps=4,
                          optimizer={"name": optimizer, "clip_grad_norm": 1.0}, dtype=torch.float64)
    b, model_b = _trainer(train_micro_batch_size=2, gradient_accumulation_steps=2, max_steps=4,
                          optimizer={"name": optimizer, "clip_grad_norm": 1.0}, dtype=torch.float64)
    losses_a, losses_b = Recorder(), Recorder()
    a.callbacks.callbacks.append(losses_a)
    b.callbacks.callbacks.append(losses_b)
    a.train()
    b.train()
    assert max(abs(x - y) for x, y in zip(losses_a.losses, losses_b.losses)) <= 1e-6
    if optimizer == "sgd":
        # Adam divides by sqrt(v) + eps, which turns 1e-16 gradient noise on near-zero
        # entries into visible weight differences; SGD's update is linear in the gradient.
        for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
            assert (p - q).abs().max() <= 1e-10, name


def test_batch_without_trainable_tokens_is_skipped(caplog):
    records = [{"tokens": [1, 2, 3], "labels": [-100, -100, -100]}] * 4
    trainer, model = _trainer(records=records, max_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    recorder = Recorder()
    trainer.callbacks.callbacks.append(recorder)
    trainer.train()
    assert math.isnan(recorder.losses[0])
    assert "no trainable tokens" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lomo_through_the_trainer_equals_sgd():
    runs = {}
    for name in ("lomo", "sgd"):
        recorder = Recorder()
        # float64: the two clip by norms summed in different orders.
        trainer, _ = _trainer(train_epochs=4, optimizer={"name": name, "clip_grad_norm": 1.0, "lr": 1.0},
                              dtype=torch.float64)
        trainer.callbacks.callbacks.append(recorder)
        trainer.train()
        runs[name] = recorder.losses
        assert trainer.updates_in_backward == (name == "lomo")
    assert len(runs["lomo"]) == len(runs["sgd"]) == 16
    assert max(abs(a - b) for a, b in zip(runs["lomo"], runs["sgd"])) <= 1e-9
    assert runs["lomo"][-1] < 0.95 * runs["lomo"][0]


def test_sophiag_hessian_is_refreshed():
    trainer, _ = _trainer(max_steps=2, optimizer={"name": "sophiag"})
    trainer.optimizer.hessian_update_interval = 2
    trainer.train()
    hessians = [s["hessian"] for s in trainer.optimizer.state.values()]
    assert hessians and any(h.abs().sum() > 0 for h in hessians)


@pytest.mark.parametrize("optimizer", ["adamw", "adalomo"])
def test_resume_is_bit_exact(tmp_path, optimizer):
    straight = Recorder()
    trainer, _ = _trainer(tmp_path / "a", max_steps=8, train_epochs=3, optimizer={"name": optimizer})
    trainer.callbacks.callbacks.append(straight)
    trainer.train()

    first = Recorder()
    trainer, _ = _trainer(tmp_path / "b", max_steps=3, train_epochs=3, checkpoint_every_n_steps=2,
                          optimizer={"name": optimizer})
    trainer.callbacks.callbacks.append(first)
    trainer.train()
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-3"
    assert (tmp_path / "b" / "checkpoints" / "step-2").is_dir()
    second = Recorder()
    trainer, _ = _trainer(tmp_path / "b", max_steps=8, train_epochs=3, optimizer={"name": optimizer})
    trainer.callbacks.callbacks.append(second)
    trainer.train()  # resumes from `latest` (step 3, mid-epoch: saved at the end of training) in output_dir
    assert trainer.global_step == 8
    assert first.losses + second.losses == straight.losses


def test_bf16_storage_computes_in_fp32_on_cpu():
    config = CollieConfig(model_config=tiny_llama_config(), train_micro_batch_size=4, logging=[], seed=1,
                          train_epochs=6, checkpointing=True)
    config.optimizer.name, config.optimizer.lr = "adalomo", 3e-2
    model = LlamaForCausalLM.from_config(config, seed=0, dtype=torch.bfloat16)
    recorder = Recorder()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[recorder])
    layer_outputs = set()
    trainer.model.layers["0"].register_forward_hook(lambda module, args, out: layer_outputs.add(out.dtype))
    trainer.train()
    assert trainer.model.compute_dtype == torch.float32 and layer_outputs == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    assert recorder.losses[-1] < 0.9 * recorder.losses[0]


@pytest.mark.parametrize("shuffle", [True, False])
def test_data_shuffle_false_keeps_the_dataset_order(shuffle):
    seen = []

    class Order(Callback):
        def on_train_batch_begin(self, trainer, batch):
            seen.extend(tuple(item["input_ids"]) for micro in batch for item in micro)

    config = CollieConfig.load(None, ["max_steps=4", "train_micro_batch_size=2", "logging=[]",
                                      f"data.shuffle={str(shuffle).lower()}"])
    dataset = CollieDatasetForTraining(RECORDS)
    Trainer(LlamaForCausalLM.from_config(tiny_llama_config(), seed=0), config, train_dataset=dataset,
            callbacks=[Order()]).train()
    in_order = [tuple(dataset[i]["input_ids"]) for i in range(8)]
    assert len(seen) == 8 and (seen == in_order) is not shuffle
