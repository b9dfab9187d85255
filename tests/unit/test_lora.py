"""LoRA in one process: peft reads what collie writes (equal logits), collie reads what peft
writes, merged exports, fused checkpoint formats, adapter-only checkpoints that resume
bit-exactly, and the errors for settings collie cannot honour."""

import json
import os

import pytest
import torch
from helpers import save_tiny_hf_model
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.peft.attach import attach_peft
from collie.peft.lora import adapter_modules, merge_adapters
from collie.trainer import Callback, Trainer

RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]
IDS = torch.tensor([RECORDS[3]["tokens"], RECORDS[4]["tokens"][:11]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_hf_model(str(tmp_path_factory.mktemp("lora") / "base"))


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def _trainer(base, tmp_path, steps=4, **peft):
    config = CollieConfig(train_micro_batch_size=4, logging=[], seed=1, output_dir=str(tmp_path), max_steps=steps)
    config.optimizer.lr = 1e-2
    config.peft.type = "lora"
    config.peft.target_modules = ["q_proj", "v_proj", "down_proj"]
    for key, value in peft.items():
        setattr(config.peft, key, value)
    model = CollieModel.from_pretrained(base, config=config)
    losses = Losses()
    return Trainer(model, config, train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[losses]), losses


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_peft_loads_collie_adapters_with_equal_logits(base, tmp_path):
    trainer, losses = _trainer(base, tmp_path)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    frozen_before = {n: p.clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    assert losses.values[-1] < losses.values[0]
    for name, param in trainer.model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), name
    trainer.save_model(str(tmp_path / "adapter"))
    assert sorted(os.listdir(tmp_path / "adapter"))[:2] == ["adapter_config.json", "adapter_model.safetensors"]
    hf = AutoModelForCausalLM.from_pretrained(base)
    peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    ours = _logits(trainer.model.eval())
    assert (ours - _logits(peft_model)).abs().max() <= 1e-5
    with peft_model.disable_adapter():
        assert (ours - _logits(peft_model)).abs().max() > 1e-3  # the adapters changed the model


def test_collie_loads_peft_adapters_and_merges_them(base, tmp_path):
    """An adapter peft wrote (its own init, a per-module rank and alpha, rsLoRA) continues
    training in collie; `collie convert --merge-lora` equals peft's merge_and_unload."""
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "up_proj"], use_rslora=True,
                        rank_pattern={"up_proj": 2}, alpha_pattern={"k_proj": 3.0}, task_type="CAUSAL_LM")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    expected = _logits(peft_model.eval())

    trainer, _ = _trainer(base, tmp_path / "run", adapter=str(tmp_path / "peft"))
    layers = adapter_modules(trainer.model)
    assert sorted({name.rsplit(".", 1)[-1] for name in layers}) == ["k_proj", "q_proj", "up_proj"]
    assert layers["layers.0.mlp.up_proj"].rank == 2
    assert (_logits(trainer.model.eval()) - expected).abs().max() <= 1e-5

    from collie.cli import main

    merged = str(tmp_path / "merged")
    assert main(["convert", str(tmp_path / "peft"), "--merge-lora", "--to-hf", merged, "--base", base]) == 0
    reference = peft_model.merge_and_unload()
    assert (_logits(AutoModelForCausalLM.from_pretrained(merged)) - _logits(reference)).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["internlm2", "chatglm"])
def test_fused_checkpoint_formats_round_trip(family, tmp_path):
    """Where the checkpoint fuses q/k/v (and gate/up), adapters are written as one adapter of
    the fused matrix (ranks summed); reading it back gives the same model (float64)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "distributed"))
    from family_layouts import FAMILIES

    model = CollieModel.from_config(FAMILIES[family], seed=1, dtype=torch.float64)
    model.save_pretrained(str(tmp_path / "base"))
    config = CollieConfig(model=str(tmp_path / "base"), param_dtype="float64")
    config.peft.type, config.peft.target_modules = "lora", "all-linear"
    config.peft.rslora = family == "chatglm"  # the fused adapter's alpha must keep alpha / sqrt(rank)
    run = attach_peft(model, _spec(model), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in adapter_modules(model).values():
            layer.lora_A.weight.normal_(0, 0.1, generator=generator)
            layer.lora_B.weight.normal_(0, 0.1, generator=generator)
    expected = _logits(model)
    run.save(str(tmp_path / "adapter"), model, _spec(model), _one_process(), base_model=str(tmp_path / "base"))
    written = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    fused = [k for k in written if "lora_A" in k and k.split(".")[-3] in ("wqkv", "query_key_value")]
    assert fused and all(written[k].shape[0] == 3 * config.peft.r for k in fused)

    config = CollieConfig(model=str(tmp_path / "base"), param_dtype="float64")
    config.peft.type, config.peft.adapter = "lora", str(tmp_path / "adapter")
    reloaded = CollieModel.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    run = attach_peft(reloaded, _spec(reloaded), config)
    run.initialise(reloaded, seed=0)
    assert (_logits(reloaded) - expected).abs().max() <= 1e-12
    merge_adapters(reloaded)
    assert (_logits(reloaded) - expected).abs().max() <= 1e-12


def test_lora_checkpoint_holds_adapters_and_resumes_bit_exactly(base, tmp_path):
    full, full_losses = _trainer(base, tmp_path / "full", steps=6)
    full.train()
    first, _ = _trainer(base, tmp_path / "resumed", steps=3)
    first.train()
    path = first.save_checkpoint()
    with open(os.path.join(path, "adapters.json")) as f:
        assert json.load(f)["base_model"] == base
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    adapters = {f"{name}.{w}.weight" for name in adapter_modules(first.model) for w in ("lora_A", "lora_B")}
    assert {k[len("model."):] for k in saved if k.startswith("model.")} == adapters  # no frozen base weights
    assert {k.split(".", 2)[2].rsplit(".", 1)[0] for k in saved if k.startswith("optim.state.")} == adapters
    second, second_losses = _trainer(base, tmp_path / "resumed", steps=6)
    second.train()
    assert second_losses.values == full_losses.values[3:]
    # The checkpoint converts to peft's files, equal to what the run exports.
    from collie.convert import dcp_to_hf

    dcp_to_hf(path, str(tmp_path / "from_checkpoint"))
    first.save_model(str(tmp_path / "exported"))
    a = load_file(tmp_path / "from_checkpoint" / "adapter_model.safetensors")
    b = load_file(tmp_path / "exported" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_peft_config_object_and_yaml_section_agree(base, tmp_path):
    yaml_run, _ = _trainer(base, tmp_path / "yaml", steps=2, r=4, alpha=8.0)
    config = CollieConfig(train_micro_batch_size=4, logging=[], seed=1, max_steps=2,
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    config.optimizer.lr = 1e-2
    losses = Losses()
    object_run = Trainer(CollieModel.from_pretrained(base, config=config), config,
                         train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[losses])
    yaml_losses = yaml_run.callbacks.callbacks[0]
    yaml_run.train()
    object_run.train()
    assert losses.values == yaml_losses.values


@pytest.mark.parametrize("setting, message", [
    ({"peft.target_modules": ["nope"]}, "peft.target_modules: ['nope'] matches no linear layer"),
    ({"peft.type": "ia3"}, "peft.type: 'ia3' is not one of none, lora"),
    ({"peft.r": 0}, "peft.r: must be >= 1"),
    ({"peft_config": LoraConfig(use_dora=True)}, "peft_config.use_dora: True is not supported"),
    ({"peft_config": LoraConfig(bias="all")}, "peft_config.bias: 'all' is not supported"),
])
def test_bad_lora_settings_fail_with_the_field(base, setting, message):
    config = CollieConfig(logging=[])
    for key, value in setting.items():
        if key.startswith("peft."):
            setattr(config.peft, key[len("peft."):], value)
            config.peft.type = value if key == "peft.type" else "lora"
        else:
            setattr(config, key, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.validate()
        model = CollieModel.from_pretrained(base, config=config)
        attach_peft(model, _spec(model), config)


def test_save_pretrained_refuses_unmerged_adapters(base, tmp_path):
    model = CollieModel.from_pretrained(base)
    config = CollieConfig()
    config.peft.type = "lora"
    attach_peft(model, _spec(model), config)
    with pytest.raises(ValueError, match="has LoRA adapters"):
        model.save_pretrained(str(tmp_path / "out"))


def _spec(model):
    from collie.models.registry import spec_of

    return spec_of(model)


def _one_process():
    from types import SimpleNamespace

    return SimpleNamespace(pp_size=1, env=SimpleNamespace(rank=0))
