"""The decoder network's settings, read once from an HF config into a typed view.

The families built on this network name these fields differently in their config.json; their
config classes (transformers' own, or collie's for the families transformers does not ship)
answer the standard HF names, which `decoder_args` reads. Where a family means something else
by a field (Qwen2's unused sliding window, GLM's biases), its spec's own reader adjusts the
result (`dataclasses.replace`), so no family is named here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from collie.models.common.rope import rope_settings


@dataclass(frozen=True)
class DecoderArgs:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_eps: float
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tied_embeddings: bool
    rope_theta: float
    rope_scaling: dict
    # Dims of each head that rotate (ChatGLM: half), and GLM's interleaved pairing.
    rotary_dim: int
    rope_interleaved: bool
    max_positions: int
    # Attend to at most this many previous positions (Mistral); None: the whole causal past.
    sliding_window: Optional[int]
    dropout: float


def decoder_args(config) -> DecoderArgs:
    """The settings of a LLaMA-style config (standard HF field names)."""
    heads = config.num_attention_heads
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act: {act!r} is not supported by the LLaMA family (expected 'silu')")
    # `attention_bias` covers q/k/v and o unless the config names o's bias on its own (ChatGLM).
    qkv_bias = bool(getattr(config, "attention_bias", False))
    theta, scaling = rope_settings(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    partial = float(scaling.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    window = getattr(config, "sliding_window", None)
    return DecoderArgs(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
                       kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                       intermediate=config.intermediate_size, vocab=config.vocab_size, rms_eps=config.rms_norm_eps,
                       qkv_bias=qkv_bias, o_bias=bool(getattr(config, "attention_output_bias", qkv_bias)),
                       mlp_bias=bool(getattr(config, "mlp_bias", False)),
                       tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), rope_theta=theta,
                       rope_scaling=scaling, rotary_dim=int(head_dim * partial),
                       rope_interleaved=bool(getattr(config, "rope_interleaved", False)),
                       max_positions=getattr(config, "max_position_embeddings", 2048),
                       sliding_window=int(window) if window else None,
                       dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0))
