"""ChatGLM-6B's checkpoint names ↔ ours.

Its `attention.query_key_value` (weight and bias) holds q, k and v per head: the rows, viewed as
(heads, 3, head_dim, …), give each head's query, key and value rows in turn. Loading splits it
into q/k/v (tensor parallel then shards whole heads), saving interleaves them back. The rotary
`inv_freq` buffers in the checkpoint are not weights.
"""

from __future__ import annotations

from collie.models.hf_adapter import Fused, HFAdapter


class ChatGLMv1HFAdapter(HFAdapter):
    architecture = "ChatGLMForConditionalGeneration"
    edges = [("embed_tokens.", "transformer.word_embeddings."), ("norm.", "transformer.final_layernorm."),
             ("lm_head.", "lm_head.")]
    hf_block = "transformer.layers.{}."
    block = [("self_attn.o_proj.", "attention.dense."), ("mlp.fc_in.", "mlp.dense_h_to_4h."),
             ("mlp.fc_out.", "mlp.dense_4h_to_h.")]
    fused = [Fused("attention.query_key_value.", ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."),
                   lambda hf_config: (hf_config.num_attention_heads, (1, 1, 1)))]
    ignored = ("attention.rotary_emb.inv_freq",)
