"""ChatGLM2/3 and GLM checkpoint names ↔ ours (the decoder network's).

Both formats stack several of our matrices by rows: ChatGLM's `query_key_value` is [q | k | v]
(weight and bias, grouped-query heads contiguous), and the MLP's `dense_h_to_4h` (ChatGLM) or
`gate_up_proj` (transformers' GLM) is [gate | up]. Loading splits them, saving stacks them.
"""

from __future__ import annotations

from collie.models.hf_adapter import Fused, HFAdapter, TransformersLayoutAdapter

_GATE_UP = ("mlp.gate_proj.", "mlp.up_proj.")


def _qkv_rows(hf_config) -> tuple[int, tuple[int, ...]]:
    # One group; the parts' rows in units of kv_channels (a head's width).
    kv = hf_config.num_key_value_heads
    return 1, (hf_config.num_attention_heads, kv, kv)


def _halves(hf_config) -> tuple[int, tuple[int, ...]]:
    return 1, (1, 1)


class ChatGLMHFAdapter(HFAdapter):
    architecture = "ChatGLMModel"
    edges = [("embed_tokens.", "transformer.embedding.word_embeddings."),
             ("norm.", "transformer.encoder.final_layernorm."), ("lm_head.", "transformer.output_layer.")]
    hf_block = "transformer.encoder.layers.{}."
    block = [("self_attn.o_proj.", "self_attention.dense."), ("mlp.down_proj.", "mlp.dense_4h_to_h.")]
    fused = [Fused("self_attention.query_key_value.", ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."),
                   _qkv_rows),
             Fused("mlp.dense_h_to_4h.", _GATE_UP, _halves)]
    ignored = ("rotary_pos_emb.inv_freq",)


class GlmHFAdapter(TransformersLayoutAdapter):
    """transformers' own GLM format: the usual names with gate and up stacked."""

    architecture = "GlmForCausalLM"
    fused = [Fused("mlp.gate_up_proj.", _GATE_UP, _halves)]
