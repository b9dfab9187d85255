"""ChatGLM-6B's checkpoint names ↔ ours.

Its `attention.query_key_value` (weight and bias) holds q, k and v per head: the rows, viewed as
(heads, 3, head_dim, …), give each head's query, key and value rows in turn. Loading splits it
into q/k/v (tensor parallel then shards whole heads), saving interleaves them back. The rotary
`inv_freq` buffers in the checkpoint are not weights.
"""

from __future__ import annotations

from collie.models.hf_adapter import BlockTableAdapter


class ChatGLMv1HFAdapter(BlockTableAdapter):
    architecture = "ChatGLMForConditionalGeneration"
    edges = [("embed_tokens.", "transformer.word_embeddings."), ("norm.", "transformer.final_layernorm."),
             ("lm_head.", "lm_head.")]
    block = [("input_layernorm.", "input_layernorm."), ("post_attention_layernorm.", "post_attention_layernorm."),
             ("self_attn.o_proj.", "attention.dense."), ("mlp.fc_in.", "mlp.dense_h_to_4h."),
             ("mlp.fc_out.", "mlp.dense_4h_to_h.")]
    hf_block = "transformer.layers.{}."
    ignored = ("attention.rotary_emb.inv_freq",)
    fused_qkv = "attention.query_key_value."

    def qkv_groups(self, hf_config) -> int:
        return hf_config.num_attention_heads
