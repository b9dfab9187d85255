"""QLoRA: the frozen base's block linears in 4 bits (bitsandbytes), LoRA on top. The quantized
model computes exactly what its dequantized weights give; it trains; the checkpoint holds the
adapters only; and the device logic answers in one line where it cannot run."""

import sys

import pytest
import torch
from helpers import save_tiny_hf_model

from collie import CollieConfig
from collie.config import ConfigError
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel, is_meta
from collie.peft import qlora
from collie.peft.quantize import Linear4bit, is_4bit, require_backend
from collie.trainer import Callback, Trainer

bnb = pytest.importorskip("bitsandbytes")
RECORDS = [{"tokens": [(7 * i + 3 * j) % 200 + 1 for j in range(8 + i % 5)]} for i in range(16)]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


def _trainer(base, tmp_path, steps=6, quant_type="nf4", checkpointing="none"):
    config = CollieConfig(train_micro_batch_size=16, logging=[], seed=1, max_steps=steps, output_dir=str(tmp_path),
                          quantization_config={"load_in_4bit": True, "bnb_4bit_quant_type": quant_type},
                          checkpointing=checkpointing)
    config.optimizer.lr = 1e-2
    config.peft.type = "lora"
    losses = Losses()
    return Trainer(CollieModel.from_pretrained(base, config=config), config,
                   train_dataset=CollieDatasetForTraining(RECORDS), callbacks=[losses]), losses


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_model_equals_its_dequantized_weights(tmp_path, quant_type):
    base = save_tiny_hf_model(str(tmp_path / "base"))
    trainer, _ = _trainer(base, tmp_path, quant_type=quant_type)
    quantized = trainer.model
    reference = CollieModel.from_pretrained(base).eval()
    count = 0
    with torch.no_grad():
        for name, param in quantized.named_parameters(remove_duplicate=False):
            if is_4bit(param):
                dequantized = bnb.functional.dequantize_4bit(param.data, param.quant_state)
                reference.get_parameter(name).copy_(dequantized)
                count += 1
    assert count == 2 * 7  # every linear of both blocks: q, k, v, o, gate, up, down
    assert isinstance(quantized.layers["0"].mlp.up_proj, Linear4bit)  # not targeted: plain 4-bit layer
    ids = torch.tensor([RECORDS[2]["tokens"]])
    with torch.no_grad():  # B starts at zero: the adapters add nothing yet
        assert (quantized.eval()(ids).logits - reference(ids).logits).abs().max() <= 1e-5


def test_weights_are_quantized_as_they_are_read_as_after_a_whole_load(tmp_path, monkeypatch):
    """`from_pretrained` with QLoRA returns an empty model; the Trainer quantizes each frozen
    linear as its weight is read, while every other one is still empty or already 4-bit (the
    full-precision base is never whole), giving the bits a whole load then quantization gives."""
    base = save_tiny_hf_model(str(tmp_path / "base"))
    seen = []

    def take(self, name, piece):
        frozen = [m.weight for m in self.pending.values()]
        seen.append(all(p.is_meta or is_4bit(p) for p in frozen))
        return original(self, name, piece)

    original = qlora.QuantizingLoad.take
    monkeypatch.setattr(qlora.QuantizingLoad, "take", take)
    trainer, _ = _trainer(base, tmp_path, checkpointing="full")  # names inside checkpoint wrappers too
    assert len(seen) == 2 * 7 + 2 * 2 + 3 and all(seen)  # every checkpoint tensor: linears, norms, edges
    assert not is_meta(trainer.model)
    loaded = CollieModel.from_pretrained(base)
    streamed = 0
    for name, param in trainer.model.state_dict(keep_vars=True).items():
        if is_4bit(param):
            reference = bnb.nn.Params4bit(loaded.get_parameter(name).data, requires_grad=False,
                                          quant_type="nf4", compress_statistics=False).to("cpu")
            assert torch.equal(param.data, reference.data), name
            assert torch.equal(param.quant_state.absmax, reference.quant_state.absmax), name
            streamed += 1
        elif "lora_" not in name:
            assert torch.equal(param, loaded.get_parameter(name)), name
    assert streamed == 2 * 7


def test_qlora_trains_and_checkpoints_adapters_only(tmp_path):
    base = save_tiny_hf_model(str(tmp_path / "base"))
    trainer, losses = _trainer(base, tmp_path)
    trainer.train()
    assert all(b < a for a, b in zip(losses.values, losses.values[1:])), losses.values
    path = trainer.save_checkpoint()
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(path).read_metadata().state_dict_metadata
    assert {k for k in saved if k.startswith("model.")} == {
        f"model.layers.{i}.self_attn.{p}_proj.lora_{w}.weight" for i in range(2) for p in "qv" for w in "AB"}
    resumed, resumed_losses = _trainer(base, tmp_path, steps=8)
    resumed.train()
    assert len(resumed_losses.values) == 2 and resumed_losses.values[0] < losses.values[-1]


def test_missing_bitsandbytes_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match=r"QLoRA needs the `bitsandbytes` package \(pip install bitsandbytes\)"):
        require_backend(torch.device("cpu"))


def test_device_without_4bit_kernels_is_one_line(monkeypatch):
    """What a bitsandbytes without kernels for the device (e.g. an old CPU-less build) raises
    becomes one line naming what is needed."""
    def no_kernels(self, *args, **kwargs):
        raise NotImplementedError("no kernel")

    monkeypatch.setattr(bnb.nn.Params4bit, "to", no_kernels)
    with pytest.raises(ConfigError, match=r"has no 4-bit kernels for cpu \(NotImplementedError\); QLoRA needs a "
                                          r"CUDA GPU here"):
        require_backend(torch.device("cpu"))
