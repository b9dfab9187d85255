"""Preference training through the Trainer (float64, one process): the first step's update is
trl's DPO gradient, gradient accumulation and LOMO keep a pair's loss whole, the precomputed
reference equals a frozen model and LoRA's adapters-off base, a resumed run reuses its reference
cache bit for bit, the rewards reach metrics.csv, evaluation, and the settings refused in one line.
Layouts are compared in tests/distributed/test_layouts.py."""

import copy
import csv
import logging
import math
import os

import pytest
import torch
from datasets import Dataset
from test_preference_losses import Float64Head, needs_trl
from transformers import LlamaConfig, LlamaForCausalLM

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForPreference
from collie.evaluate.preference import EvaluatorForPreference
from collie.models.base import CollieModel
from collie.models.loss import GPTLMLoss
from collie.preference import PreferenceLoss
from collie.trainer import Callback, Trainer, reference_pass

RECORDS = [{"prompt": "Question: what is 2+2?\nAnswer:", "chosen": " 4", "rejected": " five"},
           {"prompt": "Say hi", "chosen": " hi there", "rejected": " go away now"},
           {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " A fish."},
           {"prompt": "Is ice cold?", "chosen": " Yes.", "rejected": " It is a kind of hat."}]


@pytest.fixture(scope="module")
def seed(tmp_path_factory, bundled_tokenizer):
    """A tiny float64 LLaMA saved in HF format, and the same model in memory."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(bundled_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         torch_dtype="float64")
    model = LlamaForCausalLM(config).to(torch.float64)
    path = str(tmp_path_factory.mktemp("preference") / "seed")
    model.save_pretrained(path)
    bundled_tokenizer.save_pretrained(path)
    return path, model


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def train(seed_dir: str, tokenizer, output_dir: str, *overrides: str, records=RECORDS, **trainer_args):
    config = CollieConfig.load(None, [f"model={seed_dir}", "param_dtype=float64", f"output_dir={output_dir}",
                                      "train_micro_batch_size=2", "gradient_accumulation_steps=1", "max_steps=3",
                                      "logging=[csv]", "optimizer.lr=0.01", "data.shuffle=false", *overrides])
    model = CollieModel.from_pretrained(seed_dir, config=config)
    losses = Losses()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForPreference(records, tokenizer), tokenizer=tokenizer,
                      callbacks=[losses], **trainer_args)
    trainer.train()
    return trainer, losses.values


def metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@needs_trl
@pytest.mark.parametrize("optimizer,micro,accumulation", [("sgd", 4, 1), ("lomo", 1, 4)])
def test_first_step_is_trl_dpo_gradient(seed, bundled_tokenizer, tmp_path, optimizer, micro, accumulation):
    """One step at lr 1 moves every weight by minus the gradient of trl's DPOTrainer loss (reference:
    the initial model) on the same four pairs, whether they are one micro-batch or four; LOMO's
    update inside backward needs each pair's loss whole, which one pair per micro-batch tests."""
    from trl import DPOConfig, DPOTrainer  # a dev dependency that takes seconds to import

    path, hf_model = seed
    args = DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, beta=0.5,
                     per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True)
    trl = DPOTrainer(model=copy.deepcopy(hf_model), ref_model=copy.deepcopy(hf_model), args=args,
                     train_dataset=Dataset.from_list(RECORDS), processing_class=bundled_tokenizer)
    inputs = trl.data_collator([trl.train_dataset[i] for i in range(len(RECORDS))])
    # trl's loss of collie's own network (transformers' computes its rotary tables in float32, ~1e-8 apart).
    policy = CollieModel.from_pretrained(path, config=CollieConfig(param_dtype="float64"))
    trl.ref_model = Float64Head(CollieModel.from_pretrained(path, config=CollieConfig(param_dtype="float64")))
    trl_loss = trl.compute_loss(Float64Head(policy), inputs)
    trl_loss.backward()

    trainer, losses = train(path, bundled_tokenizer, str(tmp_path / "collie"), "preference.loss=dpo",
                            "preference.beta=0.5", f"optimizer.name={optimizer}", "optimizer.lr=1.0",
                            "optimizer.clip_grad_norm=null", "max_steps=1", f"train_micro_batch_size={micro}",
                            f"gradient_accumulation_steps={accumulation}")
    assert losses[0] == pytest.approx(math.log(2), abs=1e-12) == pytest.approx(trl_loss.item(), abs=1e-12)
    trainer.save_model(str(tmp_path / "after"))
    after = dict(CollieModel.from_pretrained(str(tmp_path / "after"), config=CollieConfig(param_dtype="float64"))
                 .named_parameters())
    before = CollieModel.from_pretrained(path, config=CollieConfig(param_dtype="float64"))
    moved = 0
    for name, p in before.named_parameters():
        grad = dict(policy.named_parameters())[name].grad
        assert torch.allclose(p.detach() - after[name].detach(), grad, rtol=0, atol=1e-9), name
        moved += bool(grad.abs().max() > 1e-6)
    assert moved > 10


def test_rewards_reach_metrics_and_the_reference_is_cached(seed, bundled_tokenizer, tmp_path):
    out = str(tmp_path / "run")
    _, losses = train(seed[0], bundled_tokenizer, out, "preference.loss=dpo", "preference.beta=0.5")
    rows = metrics(out)
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses, abs=0)
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2), abs=1e-12)
    assert float(rows[0]["reward_accuracy"]) == 0.0 and float(rows[0]["reward_margin"]) == 0.0
    assert float(rows[-1]["reward_margin"]) > 0 and float(rows[-1]["reward_accuracy"]) > 0
    for r in rows:
        assert float(r["reward_margin"]) == pytest.approx(float(r["rewards_chosen"]) - float(r["rewards_rejected"]),
                                                          abs=1e-12)
    assert os.path.isfile(reference_pass.cache_path(out, "train"))


def test_resume_reuses_the_reference_cache_bit_for_bit(seed, bundled_tokenizer, tmp_path, monkeypatch, caplog):
    """Stopped at step 2 and resumed: the same losses as a run straight through, with the weights
    in memory no longer the initial ones, so the reference must come from the cache."""
    _, straight = train(seed[0], bundled_tokenizer, str(tmp_path / "straight"), "preference.loss=dpo", "max_steps=4")
    out = str(tmp_path / "resumed")
    _, first = train(seed[0], bundled_tokenizer, out, "preference.loss=dpo", "max_steps=2",
                     "checkpoint_every_n_steps=2")

    def refuse(*args, **kwargs):
        raise AssertionError("the reference pass ran again")

    monkeypatch.setattr(reference_pass, "compute", refuse)
    with caplog.at_level(logging.INFO, logger="collie"):
        _, second = train(seed[0], bundled_tokenizer, out, "preference.loss=dpo", "max_steps=4",
                          "checkpoint_every_n_steps=2")
    assert "read from" in caplog.text
    assert first + second == straight  # bit for bit


def test_a_cache_of_other_data_is_not_used(seed, bundled_tokenizer, tmp_path):
    out = str(tmp_path / "run")
    train(seed[0], bundled_tokenizer, out, "preference.loss=dpo", "max_steps=1")
    path = reference_pass.cache_path(out, "train")
    assert reference_pass.read_cache(path, "another fingerprint", len(RECORDS)) is None
    with open(path, "w") as f:
        f.write("{not json")
    assert reference_pass.read_cache(path, "x", len(RECORDS)) is None
    # Other records in the same output_dir: computed again, and their first step is ln 2 again.
    _, losses = train(seed[0], bundled_tokenizer, str(tmp_path / "other"), "preference.loss=dpo", "max_steps=1",
                      records=RECORDS[::-1])
    assert losses[0] == pytest.approx(math.log(2), abs=1e-12)


@pytest.mark.parametrize("lora", [False, True])
def test_model_reference_equals_the_precomputed_one(seed, bundled_tokenizer, tmp_path, lora):
    """A frozen copy — under LoRA, the model itself with its adapters off — gives what the
    precomputed pass gives."""
    extra = ["peft.type=lora", "peft.target_modules=all-linear", "optimizer.lr=0.05"] if lora else []
    _, precomputed = train(seed[0], bundled_tokenizer, str(tmp_path / "pre"), "preference.loss=ipo", *extra)
    _, frozen = train(seed[0], bundled_tokenizer, str(tmp_path / "model"), "preference.loss=ipo",
                      "preference.reference=model", *extra)
    assert frozen == pytest.approx(precomputed, abs=1e-12)
    assert abs(precomputed[-1] - precomputed[0]) > 1e-4  # it trained


def test_a_preference_loss_object_as_loss_fn(seed, bundled_tokenizer, tmp_path):
    """The Trainer's loss_fn may be the preference loss itself: SimPO, no reference at all."""
    trainer, losses = train(seed[0], bundled_tokenizer, str(tmp_path / "simpo"), loss_fn=PreferenceLoss("simpo"))
    assert trainer.preference is not None and len(losses) == 3
    assert not os.path.exists(os.path.join(str(tmp_path / "simpo"), "reference"))
    assert "reward_margin" in metrics(str(tmp_path / "simpo"))[0]


def test_evaluator_reports_preference_accuracy(seed, bundled_tokenizer, tmp_path):
    config = CollieConfig.load(None, [f"model={seed[0]}", "param_dtype=float64", f"output_dir={tmp_path}",
                                      "train_micro_batch_size=2", "max_steps=4", "logging=[]", "optimizer.lr=0.01",
                                      "preference.loss=dpo", "eval_batch_size=3"])
    model = CollieModel.from_pretrained(seed[0], config=config)
    dataset = CollieDatasetForPreference(RECORDS, bundled_tokenizer)
    trainer = Trainer(model, config, train_dataset=dataset, eval_dataset=dataset, tokenizer=bundled_tokenizer)
    assert isinstance(trainer.evaluators[0], EvaluatorForPreference)
    before = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-12)
    assert before["eval_reward_accuracy"] == 0.0
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_reward_margin"] > 0 and after["eval_loss"] < math.log(2)
    assert after["eval_reward_accuracy"] > 0


@pytest.mark.parametrize("overrides,message", [
    (["preference.loss=kto"], "preference.loss: 'kto' is not one of"),
    (["preference.loss=dpo", "preference.reference=none"], "dpo compares the policy with a reference model"),
    (["preference.loss=simpo", "preference.reference=precomputed"], "simpo uses no reference model"),
    (["preference.reference=model"], "preference.reference: set preference.loss too"),
    (["preference.loss=dpo", "preference.reference=copy"], "'copy' is not one of precomputed, model, none"),
    (["preference.loss=dpo", "data.packing=true"], "data.packing: preference pairs are not packed"),
    (["preference.loss=dpo", "loss_chunk_tokens=8"], "loss_chunk_tokens: preference losses need"),
    (["preference.loss=dpo", "preference.beta=0"], "preference.beta: must be a positive number"),
    (["preference.loss=ipo", "preference.label_smoothing=0.1"], "applies to dpo and simpo only"),
])
def test_bad_preference_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        CollieConfig.load(None, overrides).validate()


@pytest.mark.parametrize("argument,message", [
    ({"train_fn": lambda trainer, batch, step: None}, "train_fn: a preference run's step is its pair loss"),
    ({"loss_fn": GPTLMLoss()}, "loss_fn: preference.loss is the loss of a preference run"),
    ({"loss_fn": PreferenceLoss("simpo")}, "give the preference loss once"),
    ({"train_dataset_collate_fn": lambda items: items}, "collie collates preference pairs itself"),
])
def test_trainer_arguments_that_would_replace_the_pair_step(seed, bundled_tokenizer, argument, message):
    config = CollieConfig.load(None, [f"model={seed[0]}", "logging=[]", "preference.loss=dpo"])
    model = CollieModel.from_pretrained(seed[0], config=config)
    with pytest.raises(ConfigError, match=message):
        Trainer(model, config, train_dataset=CollieDatasetForPreference(RECORDS, bundled_tokenizer),
                tokenizer=bundled_tokenizer, **argument)
