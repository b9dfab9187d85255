"""Prompt tuning in one process: peft reads the prompt collie trains (equal logits), collie
continues from a peft-written prompt, the padder reserves the prompt's positions ahead of any
padding, and the layouts that cannot hold a prompt say so."""

import os

import pytest
import torch
from helpers import save_tiny_hf_model
from peft import PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForTraining
from collie.data.collate import ColliePadder
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]
N = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_hf_model(str(tmp_path_factory.mktemp("prompt") / "base"))


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def _trainer(base, steps=12, **peft):
    config = CollieConfig(train_micro_batch_size=16, logging=[], seed=1, max_steps=steps)
    config.optimizer.lr = 0.1
    config.peft.type, config.peft.num_virtual_tokens = "prompt_tuning", N
    for key, value in peft.items():
        setattr(config.peft, key, value)
    losses = Losses()
    trainer = Trainer(CollieModel.from_pretrained(base, config=config), config,
                      train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[losses])
    return trainer, losses


def _with_slots(ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(ids.shape[0], N, dtype=torch.long), ids], dim=1)


def test_prompt_trains_and_peft_reads_it(base, tmp_path):
    trainer, losses = _trainer(base)
    assert [n for n, p in trainer.model.named_parameters() if p.requires_grad] == ["prompt.weight"]
    trainer.train()
    # The whole set is every step's batch: the loss on it falls at every step.
    assert all(b < a for a, b in zip(losses.values, losses.values[1:])), losses.values
    trainer.save_model(str(tmp_path / "prompt"))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(tmp_path / "prompt"))
    ids = torch.tensor([RECORDS[3]["tokens"]])
    with torch.no_grad():
        ours = trainer.model.eval()(_with_slots(ids)).logits
        assert (ours - peft_model.eval()(input_ids=ids).logits).abs().max() <= 1e-5


def test_continues_from_a_peft_prompt_and_generates_like_peft(base, tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    trainer, _ = _trainer(base, adapter=str(tmp_path / "peft"))
    ids = torch.tensor([RECORDS[5]["tokens"]])
    with torch.no_grad():
        assert (trainer.model.eval()(_with_slots(ids)).logits - peft_model.eval()(input_ids=ids).logits).abs().max() \
            <= 1e-5
    # Greedy decoding with the KV cache equals peft's forward re-run on the whole sequence.
    expected = ids
    with torch.no_grad():
        for _ in range(5):
            next_token = peft_model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, next_token], dim=1)
    ours = trainer.model.generate(_with_slots(ids), max_new_tokens=5)
    assert ours[0, N + ids.shape[1]:].tolist() == expected[0, ids.shape[1]:].tolist()


def test_text_init_uses_the_texts_embeddings(tmp_path):
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path

    base = save_tiny_hf_model(str(tmp_path / "base"), vocab_size=4096)  # the bundled tokenizer's size
    config = CollieConfig(logging=[], model=base, tokenizer=bundled_tokenizer_path())
    config.peft.type, config.peft.num_virtual_tokens, config.peft.prompt_init_text = "prompt_tuning", 5, "collie"
    model = CollieModel.from_pretrained(base, config=config)
    embedding = model.embed_tokens.weight.detach().clone()
    trainer = Trainer(model, config, train_dataset=CollieDatasetForTraining(RECORDS))
    ids = AutoTokenizer.from_pretrained(bundled_tokenizer_path())("collie", add_special_tokens=False)["input_ids"]
    expected = embedding[torch.tensor((ids * 5)[:5])]
    assert torch.equal(trainer.model.prompt.weight.detach(), expected)


def test_padder_reserves_the_prompt_ahead_of_padding():
    items = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    left = ColliePadder(0, "left", virtual_tokens=2)(items)
    assert left["input_ids"].tolist() == [[0, 0, 5, 6, 7], [0, 0, 0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    assert left["labels"].tolist() == [[-100, -100, -100, 6, 7], [-100, -100, -100, -100, -100]]
    right = ColliePadder(0, "right", virtual_tokens=2)(items)
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


@pytest.mark.parametrize("fields, message", [
    ({"pp_size": 2}, "pp_size: prompt tuning runs with data and tensor parallel only"),
    ({"tp_size": 2, "sequence_parallel": True}, "sequence_parallel: prompt tuning needs every rank"),
])
def test_layouts_that_cannot_hold_a_prompt_say_so(fields, message):
    config = CollieConfig(**fields)
    config.peft.type = "prompt_tuning"
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_a_prompt_cannot_be_merged(base, tmp_path, capsys):
    trainer, _ = _trainer(base, steps=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "prompt"))
    from collie.cli import main

    assert main(["convert", str(tmp_path / "prompt"), "--merge-lora", "--to-hf", str(tmp_path / "m"),
                 "--base", base]) == 2
    assert "holds a trained prompt, not LoRA adapters" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m")
