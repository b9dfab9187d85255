"""One-to-many HF adapters: a fused checkpoint tensor is split into our parameters on load and
fused again on save, by every reader and writer (from_pretrained, save_pretrained, convert).
Exports never edit the live config, and training-only settings never reach config.json."""

import json

import torch
from helpers import fused_llama_spec, save_tiny_hf_model
from safetensors.torch import load_file

from collie import CollieConfig
from collie.convert import dcp_to_hf, hf_to_dcp
from collie.models import registry
from collie.models.base import CollieModel


def test_fused_checkpoint_round_trip(tmp_path, monkeypatch):
    plain = CollieModel.from_pretrained(save_tiny_hf_model(str(tmp_path / "plain")))
    expected = plain.state_dict()
    monkeypatch.setattr(registry, "FAMILIES", [fused_llama_spec()])
    plain.save_pretrained(str(tmp_path / "fused"))
    written = load_file(tmp_path / "fused" / "model.safetensors")
    assert not [name for name in written if any(f".{p}_proj." in name for p in "qkv")]
    for layer in ("0", "1"):
        fused = written[f"model.layers.{layer}.self_attn.qkv_proj.weight"]
        parts = [expected[f"layers.{layer}.self_attn.{p}_proj.weight"] for p in "qkv"]
        assert torch.equal(fused, torch.cat(parts))
    # 4 heads of 16 and 2 key/value heads: q is 64 rows, k and v 32 each.
    assert fused.shape == (128, 64)

    reloaded = CollieModel.from_pretrained(str(tmp_path / "fused"))
    assert reloaded.state_dict().keys() == expected.keys()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    # DCP and back: the model-only checkpoint holds our (split) names, the export fuses again.
    hf_to_dcp(str(tmp_path / "fused"), str(tmp_path / "dcp"))
    dcp_to_hf(str(tmp_path / "dcp"), str(tmp_path / "again"))
    again = load_file(tmp_path / "again" / "model.safetensors")
    assert again.keys() == written.keys()
    assert all(torch.equal(again[name], written[name]) for name in written)


def test_export_leaves_the_live_config_alone_and_drops_training_settings(tmp_path):
    path = save_tiny_hf_model(str(tmp_path / "hf"))
    config = CollieConfig.from_pretrained(path, dropout=0.3)
    model = CollieModel.from_pretrained(path, config=config, dtype=torch.bfloat16)
    assert model.config.attention_dropout == 0.3  # the model trains with it
    assert config.model_config.attention_dropout == 0.0  # the caller's config is not edited
    architectures, dtype = list(model.config.architectures), model.config.dtype
    model.save_pretrained(str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["attention_dropout"] == 0.0 and saved["dtype"] == "bfloat16"
    assert model.config.architectures == architectures and model.config.dtype == dtype


def test_every_family_adapter_splits_what_it_fuses():
    """Each family's checkpoint tables, on a tiny model of that family: every one of our tensors
    is written exactly once, under a name that reads back to ours, and split(fuse(parts)) gives
    the parts back."""
    from types import SimpleNamespace

    from collie.models.registry import FAMILIES

    tokenizer = SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    for spec in FAMILIES:
        hf_config = spec.shape_config(dict(spec.shapes["tiny"], vocab_size=256), tokenizer)
        model = CollieModel.from_config(hf_config, seed=0)
        state = model.state_dict()
        names = model.hf_state_names()
        layout = spec.adapter.hf_layout(names, hf_config)
        assert sorted(name for _, parts in layout for name in parts) == sorted(names), spec.name
        for hf_name, parts in layout:
            fused = spec.adapter.fuse(hf_name, [state[name] for name in parts], hf_config)
            back = spec.adapter.split(hf_name, fused, hf_config)
            assert [name for name, _ in back] == parts, (spec.name, hf_name)
            assert all(torch.equal(piece, state[name]) for name, piece in back), (spec.name, hf_name)
