"""Prompt tuning in one process: peft reads the prompt collie trains (equal logits), collie
continues from a peft-written prompt, the prompt goes in front inside the model's forward (no
positions reserved in the data, logits aligned with the input), and the layouts that cannot
hold a prompt say so."""

import os

import pytest
import torch
from helpers import save_tiny_hf_model
from peft import PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.models.registry import spec_of
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
        ours = trainer.model.eval()(ids).logits
        assert (ours - peft_model.eval()(input_ids=ids).logits[:, N:]).abs().max() <= 1e-5


def test_continues_from_a_peft_prompt_and_generates_like_peft(base, tmp_path):
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N))
    peft_model.save_pretrained(str(tmp_path / "peft"))
    trainer, _ = _trainer(base, adapter=str(tmp_path / "peft"))
    ids = torch.tensor([RECORDS[5]["tokens"]])
    with torch.no_grad():
        assert (trainer.model.eval()(ids).logits - peft_model.eval()(input_ids=ids).logits[:, N:]).abs().max() \
            <= 1e-5
    # Greedy decoding with the KV cache equals peft's forward re-run on the whole sequence.
    expected = ids
    with torch.no_grad():
        for _ in range(5):
            next_token = peft_model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, next_token], dim=1)
    ours = trainer.model.generate(ids, max_new_tokens=5)
    assert ours[0, ids.shape[1]:].tolist() == expected[0, ids.shape[1]:].tolist()


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


def test_no_positions_are_reserved_outside_the_model(base):
    """The padder gives prompt-tuning rows exactly the text's length, and the prompt-tuned model
    returns logits for exactly its input, equal to peft's PromptTuning model's (float64)."""
    trainer, _ = _trainer(base, steps=1, param_dtype="float64")
    items = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    for side in ("left", "right"):
        batch = trainer.parallel.padder(0, side, None)(items)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (2, 3)
        assert batch["attention_mask"].sum().item() == 4
    torch.manual_seed(3)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float64),
                                PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N)).eval()
    ours = trainer.model.eval()
    with torch.no_grad():
        ours.prompt.weight.copy_(peft_model.prompt_encoder["default"].embedding.weight)
        # Right padding: transformers counts positions over pads, collie over real tokens only.
        ids = torch.tensor([RECORDS[2]["tokens"][:7], [*RECORDS[4]["tokens"][:5], 0, 0]])
        mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
        logits = ours(ids, attention_mask=mask).logits
        expected = peft_model(input_ids=ids, attention_mask=mask).logits[:, N:]  # peft keeps the prompt's
    assert logits.shape == (*ids.shape, expected.shape[-1])
    # 1e-6: collie's float64 base alone differs from transformers' by ~5e-8 (rotary tables in fp32).
    assert (logits - expected)[mask.bool()].abs().max() <= 1e-6


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


def test_a_prompt_adapter_is_served_like_peft_and_its_positions_count(base, tmp_path):
    """`collie serve` on a peft prompt adapter: plain token ids in, peft's greedy answer out; the
    context a request may use is the model's positions less the prompt's."""
    from collie.inference import load_for_inference
    from collie.init_model import bundled_tokenizer_path
    from collie.serve.engine import decode
    from collie.serve.limits import context_length

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N)).eval()
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    loaded = load_for_inference(str(tmp_path / "adapter"), CollieConfig(tokenizer=bundled_tokenizer_path()))
    prompts = [RECORDS[1]["tokens"], RECORDS[6]["tokens"][:5]]
    chosen = []

    def choose(logits):
        chosen.append(logits.argmax(-1))
        return chosen[-1], False

    decode(loaded.model, loaded.forward_context, prompts, 4, 0, choose)
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            expected = torch.tensor([prompt])
            for _ in range(4):
                next_token = peft_model(input_ids=expected).logits[:, -1].argmax(-1, keepdim=True)
                expected = torch.cat([expected, next_token], dim=1)
            assert [int(t[row]) for t in chosen] == expected[0, len(prompt):].tolist()
    positions = loaded.hf_config.max_position_embeddings
    dims = spec_of(loaded.model).dims(loaded.hf_config)
    assert context_length(dims, loaded.tokenizer, loaded.model) == positions - N


def test_a_model_without_a_collie_family_refuses_a_prompt_in_one_line(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from collie.peft.attach import attach_peft

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(str(tmp_path / "gpt2"))
    model = CollieModel.from_pretrained(str(tmp_path / "gpt2"))
    config = CollieConfig()
    config.peft.type = "prompt_tuning"
    with pytest.raises(ConfigError, match="peft.type: prompt tuning runs on collie's model families; 'gpt2'"):
        attach_peft(model, spec_of(model), config)
