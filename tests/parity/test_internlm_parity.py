"""InternLM (v1) checkpoints — LLaMA's tensor names, q/k/v/o biases, `bias` and `rotary` in
config.json — against transformers' LLaMA with `attention_bias=True` and the same weights."""

import json

import torch
from helpers import assert_matches_reference, tiny_llama_config
from transformers import LlamaForCausalLM as HFLlama

from collie.models.base import CollieModel
from collie.models.internlm.config import InternLMConfig


def test_internlm_matches_llama_with_attention_bias(tmp_path):
    torch.manual_seed(0)
    # Dynamic NTK with InternLM's scaling factor 1.0, exercised: 40 positions > 32.
    hf = HFLlama(tiny_llama_config(num_key_value_heads=4, attention_bias=True, max_position_embeddings=32,
                                   rope_scaling={"rope_type": "dynamic", "factor": 1.0})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "internlm")  # LLaMA's names are InternLM's; only config.json differs
    config = InternLMConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, rms_norm_eps=1e-6, max_position_embeddings=32, bias=True,
                            rotary={"base": 10000, "type": "dynamic"})
    fields = dict(config.to_dict(), architectures=["InternLMForCausalLM"])
    (tmp_path / "internlm" / "config.json").write_text(json.dumps(fields))

    ours = CollieModel.from_pretrained(str(tmp_path / "internlm")).eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    assert_matches_reference(ours, hf, ids)

    ours.save_pretrained(str(tmp_path / "saved"))
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert written["model_type"] == "internlm" and written["architectures"] == ["InternLMForCausalLM"]
    assert written["rotary"] == {"base": 10000, "type": "dynamic"} and written["bias"] is True
    assert "rope_scaling" not in written and "num_key_value_heads" not in written
    reloaded = CollieModel.from_pretrained(str(tmp_path / "saved"))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), ours.state_dict().values()))
