"""InternLM2's checkpoint names ↔ ours (the decoder network's).

InternLM2 stores q, k and v of a layer in one `attention.wqkv` matrix, grouped by key/value
head: viewed as (kv_heads, q_per_kv + 2, head_dim, hidden), each group holds its q_per_kv
query heads, then its key head, then its value head. Loading splits it into q/k/v (so tensor
parallel shards whole heads of each, by construction); saving interleaves them back.
"""

from __future__ import annotations

from collie.models.hf_adapter import Fused, HFAdapter


def _qkv_layout(hf_config) -> tuple[int, tuple[int, ...]]:
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    return kv_heads, (heads // kv_heads, 1, 1)  # per group: its query heads, one key, one value head


class InternLM2HFAdapter(HFAdapter):
    architecture = "InternLM2ForCausalLM"
    edges = [("lm_head.", "output."), ("embed_tokens.", "model.tok_embeddings."), ("", "model.")]
    hf_block = "model.layers.{}."
    block = [("self_attn.o_proj.", "attention.wo."), ("mlp.gate_proj.", "feed_forward.w1."),
             ("mlp.up_proj.", "feed_forward.w3."), ("mlp.down_proj.", "feed_forward.w2."),
             ("input_layernorm.", "attention_norm."), ("post_attention_layernorm.", "ffn_norm.")]
    fused = [Fused("attention.wqkv.", ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."), _qkv_layout)]
