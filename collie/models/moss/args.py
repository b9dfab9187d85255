"""MOSS's config.json (CodeGen's fields) read into the decoder network's settings."""

from __future__ import annotations

from collie.models.common.args import DecoderArgs

# CodeGen computes q/k/v in this many model-parallel groups (fixed in its code): see hf_adapter.
MP_GROUPS = 4


def moss_args(config) -> DecoderArgs:
    act = getattr(config, "activation_function", "gelu_new")
    if act != "gelu_new":
        raise ValueError(f"activation_function: {act!r} is not supported by MOSS (expected 'gelu_new')")
    heads, hidden = config.n_head, config.n_embd
    if heads % MP_GROUPS:
        raise ValueError(f"n_head: MOSS splits its heads into {MP_GROUPS} groups, so n_head must be a multiple of "
                         f"{MP_GROUPS}, got {heads}")
    return DecoderArgs(hidden=hidden, layers=config.n_layer, heads=heads, kv_heads=heads, head_dim=hidden // heads,
                       intermediate=config.n_inner or 4 * hidden, vocab=config.vocab_size,
                       rms_eps=config.layer_norm_epsilon, qkv_bias=False, o_bias=False, mlp_bias=True,
                       tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), rope_theta=10000.0,
                       rope_scaling={}, rotary_dim=config.rotary_dim or hidden // heads, rope_interleaved=True,
                       max_positions=config.n_positions, sliding_window=None, dropout=float(config.attn_pdrop or 0.0))
