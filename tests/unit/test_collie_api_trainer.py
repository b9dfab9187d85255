"""The Trainer with CoLLiE's arguments: `train_fn(trainer, batch, global_step)`, raw tensor
datasets, `save_model`/`load_model`, a Dash page (`DashProvider`) answering during training."""

import httpx
import pytest
import torch
from helpers import AskAt, Losses, free_port, tiny_llama_config

from collie import CollieConfig, ConfigError, LlamaForCausalLM
from collie.cli import main
from collie.controller import EvaluatorForPerplexity, Trainer
from collie.data import CollieDatasetForTraining
from collie.metrics import PPLMetric
from collie.models.base import load_tokenizer
from collie.module import GPTLMLoss
from collie.serve.limits import model_name
from collie.utils import BaseProvider, DashProvider, GradioProvider

SAMPLES = [torch.tensor([(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]) for i in range(16)]
# CoLLiE's one-sentence example: a plain list of tensors, no tokenizer.
RAW = [{"input_ids": ids, "labels": ids} for ids in SAMPLES]


def _config(**fields) -> CollieConfig:
    config = CollieConfig(model_config=tiny_llama_config(), train_micro_batch_size=4, logging=[], seed=1,
                          param_dtype="float64", **fields)
    config.optimizer.lr = 1e-2
    return config


def _model(config):
    return LlamaForCausalLM.from_config(config, seed=0)


def test_collies_train_fn_gets_the_step_and_gives_the_loss():
    seen = []

    def train_fn(trainer, batch, global_step):
        seen.append(global_step)
        logits = trainer.model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return trainer.loss_fn(logits, batch["labels"])

    config, losses, plain = _config(max_steps=3), Losses(), Losses()
    # A single callback, not in a list, as CoLLiE allowed.
    Trainer(_model(config), config, train_fn=train_fn, train_dataset=RAW, loss_fn=GPTLMLoss(-100),
            callbacks=losses).train()
    config = _config(max_steps=3)
    Trainer(_model(config), config, train_dataset=RAW, callbacks=plain).train()
    assert seen == [0, 1, 2] and losses.values == pytest.approx(plain.values, abs=1e-12)


def test_a_train_fn_that_steps_itself_is_refused_in_one_line():
    config = _config(max_steps=1)
    trainer = Trainer(_model(config), config, train_fn=lambda trainer, batch, step: 1.0, train_dataset=RAW)
    with pytest.raises(ConfigError, match=r"^train_fn: return the loss tensor; collie runs backward and the optimizer "
                                          r"step itself .* got float$"):
        trainer.train()


def test_save_model_then_load_model_restores_the_weights_and_eval_runs_every_evaluator(tmp_path):
    config = _config(max_steps=2)
    model = _model(config)
    evaluator = EvaluatorForPerplexity(model=model, config=config, dataset=RAW[:4], metrics={"ppl": PPLMetric()})
    trainer = Trainer(model=model, config=config, train_dataset=RAW, evaluators=[evaluator])
    trainer.save_model(str(tmp_path / "start"), process_exclusion=True)
    before = trainer.eval()
    trainer.train()
    assert trainer.eval()["ppl"] != before["ppl"]
    trainer.load_model(str(tmp_path / "start"))
    assert trainer.eval()["ppl"] == pytest.approx(before["ppl"], rel=1e-12)
    with pytest.raises(ConfigError, match=r"^protocol='petrel': collie reads and writes through fsspec paths"):
        trainer.save_model(str(tmp_path / "x"), protocol="petrel")


def test_a_dash_page_answers_from_the_weights_being_trained(tmp_path):
    model_dir = str(tmp_path / "tiny")
    assert main(["init-model", "--shape", "tiny", model_dir]) == 0
    config = CollieConfig.from_pretrained(model_dir, max_steps=3, logging=[], train_micro_batch_size=2)
    tokenizer = load_tokenizer(model_dir)
    dataset = CollieDatasetForTraining([{"text": "collie trains models"}] * 8, tokenizer)
    port = free_port()
    got = {}

    def ask():  # what the page's Generate button sends (Dash's callback route)
        body = {"output": "..answer.children...step.children..", "outputs": [
                    {"id": "answer", "property": "children"}, {"id": "step", "property": "children"}],
                "inputs": [{"id": "generate", "property": "n_clicks", "value": 1}],
                "changedPropIds": ["generate.n_clicks"],
                "state": [{"id": "prompt", "property": "value", "value": "collie"},
                          {"id": "max_tokens", "property": "value", "value": 4},
                          {"id": "temperature", "property": "value", "value": 0},
                          {"id": "top_p", "property": "value", "value": 1}]}
        got["page"] = httpx.get(f"http://127.0.0.1:{port}/", timeout=60).status_code
        got["answer"] = httpx.post(f"http://127.0.0.1:{port}/_dash-update-component", json=body, timeout=120).json()

    provider = DashProvider(tokenizer, port=port)
    trainer = Trainer(model=LlamaForCausalLM.from_pretrained(model_dir, config=config), config=config,
                      train_dataset=dataset, data_provider=provider)
    endpoint = trainer.callbacks.callbacks[-1].port
    asking = AskAt(2, ask, f"http://127.0.0.1:{endpoint}/health")
    trainer.callbacks.callbacks.insert(0, asking)
    trainer.train()
    asking.thread.join(timeout=120)
    assert got["page"] == 200
    response = got["answer"]["response"]
    assert response["step"]["children"] == "answered by the weights of step 2"
    assert not response["answer"]["children"].startswith("error")


def test_providers_and_servers_need_what_they_serve():
    config = _config(max_steps=1)
    config.serve.port = free_port()
    with pytest.raises(ConfigError, match="data_provider and serve.port: both serve during training; give one"):
        Trainer(_model(config), config, train_dataset=RAW, data_provider=GradioProvider(None))
    config = _config(max_steps=1)
    with pytest.raises(ConfigError, match="BaseProvider: collie answers prompts through its OpenAI endpoint"):
        Trainer(_model(config), config, train_dataset=RAW, data_provider=BaseProvider())


def test_a_model_from_the_hub_cache_is_served_under_its_hub_id():
    assert model_name("/cache/hub/models--fnlp--moss-moon-003-sft/snapshots/" + "0" * 40, None) == "fnlp/moss-moon-003-sft"
    assert model_name("/models/tiny", None) == "tiny" and model_name("/models/tiny", "mine") == "mine"


def test_samples_that_do_not_fill_the_last_global_batch_are_named(caplog):
    config = _config(max_steps=1)  # a global batch of 4 × 1 × 1 over 14 samples
    with caplog.at_level("INFO", logger="collie"):
        Trainer(_model(config), config, train_dataset=RAW[:14])
    assert "2 of 14 samples do not fill a last global batch of 4 and sit out each epoch (different ones each epoch)" \
        in caplog.text
