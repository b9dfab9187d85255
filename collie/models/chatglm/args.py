"""ChatGLM-6B (v1)'s config.json read into the decoder network's settings."""

from __future__ import annotations

from collie.models.common.args import DecoderArgs


def glm_v1_args(config) -> DecoderArgs:
    heads, hidden = config.num_attention_heads, config.hidden_size
    return DecoderArgs(hidden=hidden, layers=config.num_layers, heads=heads, kv_heads=heads, head_dim=hidden // heads,
                       intermediate=config.inner_hidden_size, vocab=config.vocab_size, rms_eps=config.layernorm_epsilon,
                       qkv_bias=True, o_bias=True, mlp_bias=True, tied_embeddings=False, rope_theta=10000.0,
                       rope_scaling={}, rotary_dim=hidden // heads // 2, rope_interleaved=False,
                       max_positions=config.max_sequence_length, sliding_window=None, dropout=0.0)
