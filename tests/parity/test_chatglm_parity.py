"""ChatGLM2/3 checkpoints as published (`transformer.encoder...`, stacked [q | k | v] with biases
and [gate | up], ChatGLM's config.json incl. `rope_ratio`) against transformers' GLM holding the
same weights (half of each head rotates, interleaved; base 10000 × rope_ratio)."""

import json

import torch
from helpers import assert_matches_reference, assert_saves_back
from safetensors.torch import save_file
from transformers import GlmConfig, GlmForCausalLM

from collie.models.base import CollieModel
from collie.models.chatglm2.config import ChatGLMConfig


def _chatglm_checkpoint(hf: GlmForCausalLM) -> dict:
    """The published layout, written out independently of collie's adapter."""
    state, out = hf.state_dict(), {}
    out["transformer.embedding.word_embeddings.weight"] = state["model.embed_tokens.weight"]
    out["transformer.encoder.final_layernorm.weight"] = state["model.norm.weight"]
    out["transformer.output_layer.weight"] = state["lm_head.weight"]
    for i in range(hf.config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"transformer.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}self_attention.query_key_value.{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
        out[f"{dst}self_attention.dense.weight"] = state[f"{src}self_attn.o_proj.weight"]
        out[f"{dst}mlp.dense_h_to_4h.weight"] = state[f"{src}mlp.gate_up_proj.weight"]
        out[f"{dst}mlp.dense_4h_to_h.weight"] = state[f"{src}mlp.down_proj.weight"]
        out[f"{dst}input_layernorm.weight"] = state[f"{src}input_layernorm.weight"]
        out[f"{dst}post_attention_layernorm.weight"] = state[f"{src}post_attention_layernorm.weight"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def test_chatglm_matches_glm(tmp_path):
    torch.manual_seed(0)
    rope_ratio = 5.0  # a long-context variant: a converter that assumed 1 would fail here
    hf = GlmForCausalLM(GlmConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  head_dim=16, intermediate_size=128, vocab_size=256, max_position_embeddings=256,
                                  rms_norm_eps=1e-5, pad_token_id=0, eos_token_id=1,
                                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * rope_ratio,
                                                   "partial_rotary_factor": 0.5})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    checkpoint = _chatglm_checkpoint(hf)
    (tmp_path / "chatglm").mkdir()
    save_file(checkpoint, tmp_path / "chatglm" / "model.safetensors", metadata={"format": "pt"})
    config = ChatGLMConfig(num_layers=2, padded_vocab_size=256, hidden_size=64, ffn_hidden_size=128, kv_channels=16,
                           num_attention_heads=4, multi_query_group_num=2, seq_length=256, rope_ratio=rope_ratio)
    fields = dict(config.to_dict(), architectures=["ChatGLMModel"],
                  auto_map={"AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"})
    (tmp_path / "chatglm" / "config.json").write_text(json.dumps(fields))

    ours = CollieModel.from_pretrained(str(tmp_path / "chatglm")).eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mask = torch.ones_like(ids)
        mask[0, :5] = 0
        diff = (ours(ids, attention_mask=mask).logits - hf(ids, attention_mask=mask).logits)[mask.bool()]
        assert diff.abs().max() <= 1e-5
    assert_matches_reference(ours, hf, ids)
    written = assert_saves_back(ours, tmp_path / "saved", checkpoint)
    assert written["model_type"] == "chatglm" and written["rope_ratio"] == rope_ratio
    assert written["auto_map"] == fields["auto_map"] and "num_key_value_heads" not in written
