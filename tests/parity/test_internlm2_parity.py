"""InternLM2 checkpoints, as published (fused, grouped `wqkv`, InternLM2 names and config.json),
against transformers' LLaMA holding the same weights: logits, greedy generation, and a save
that writes the checkpoint back tensor for tensor."""

import json

import torch
from helpers import assert_matches_reference, assert_saves_back, tiny_llama_config
from safetensors.torch import save_file
from transformers import LlamaForCausalLM as HFLlama

from collie.models import LlamaForCausalLM
from collie.models.base import CollieModel
from collie.models.internlm2.config import InternLM2Config

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16


def _internlm2_checkpoint(hf: HFLlama) -> dict:
    """The published layout, written out independently of collie's adapter."""
    state, out = hf.state_dict(), {}
    out["model.tok_embeddings.weight"] = state["model.embed_tokens.weight"]
    out["model.norm.weight"] = state["model.norm.weight"]
    out["output.weight"] = state["lm_head.weight"]
    q_per_kv = HEADS // KV_HEADS
    for i in range(hf.config.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"model.layers.{i}."
        q, k, v = (state[f"{ours}self_attn.{p}_proj.weight"] for p in "qkv")
        groups = []
        for g in range(KV_HEADS):
            groups.append(q[g * q_per_kv * HEAD_DIM:(g + 1) * q_per_kv * HEAD_DIM])
            groups.append(k[g * HEAD_DIM:(g + 1) * HEAD_DIM])
            groups.append(v[g * HEAD_DIM:(g + 1) * HEAD_DIM])
        out[f"{theirs}attention.wqkv.weight"] = torch.cat(groups)
        out[f"{theirs}attention.wo.weight"] = state[f"{ours}self_attn.o_proj.weight"]
        for hf_name, name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            out[f"{theirs}feed_forward.{hf_name}.weight"] = state[f"{ours}mlp.{name}.weight"]
        out[f"{theirs}attention_norm.weight"] = state[f"{ours}input_layernorm.weight"]
        out[f"{theirs}ffn_norm.weight"] = state[f"{ours}post_attention_layernorm.weight"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def test_internlm2_matches_llama_after_the_split(tmp_path):
    torch.manual_seed(0)
    # InternLM2.5's dynamic NTK rotary scaling, exercised: 40 positions > max_position_embeddings 32.
    rope = dict(max_position_embeddings=32, rope_theta=10000.0)
    hf = HFLlama(tiny_llama_config(num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, **rope,
                                   rope_scaling={"rope_type": "dynamic", "factor": 2.0})).eval()
    checkpoint = _internlm2_checkpoint(hf)
    (tmp_path / "internlm2").mkdir()
    save_file(checkpoint, tmp_path / "internlm2" / "model.safetensors", metadata={"format": "pt"})
    config = InternLM2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, bias=False,
                             rms_norm_eps=1e-6, rope_scaling={"type": "dynamic", "factor": 2.0}, **rope)
    fields = dict(config.to_dict(), architectures=["InternLM2ForCausalLM"],
                  auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config"})
    (tmp_path / "internlm2" / "config.json").write_text(json.dumps(fields))

    ours = CollieModel.from_pretrained(str(tmp_path / "internlm2")).eval()
    assert isinstance(ours, LlamaForCausalLM)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    assert_matches_reference(ours, hf, ids)
    written = assert_saves_back(ours, tmp_path / "saved", checkpoint)
    assert written["model_type"] == "internlm2" and written["architectures"] == ["InternLM2ForCausalLM"]
    assert written["auto_map"] == fields["auto_map"] and written["bias"] is False
    assert written["rope_scaling"] == {"type": "dynamic", "factor": 2.0} and written["rope_theta"] == 10000.0
