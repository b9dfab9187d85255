"""The LLaMA architecture's settings, read once from an HF config into a typed view.

LLaMA, Qwen2, Mistral, InternLM 1/2 and ChatGLM 2/3 (GLM) are the same network with different
names in their config.json (GLM adds partial, interleaved rotary); their config classes
(transformers' own, or collie's for the families transformers does not ship) all answer these
fields, so the model reads one dataclass instead of probing a config with `getattr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from collie.models.llama.rope import rope_settings


@dataclass(frozen=True)
class LlamaArgs:
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


def llama_args(config) -> LlamaArgs:
    heads = config.num_attention_heads
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act: {act!r} is not supported by the LLaMA family (expected 'silu')")
    qkv_bias, o_bias = _attention_biases(config)
    theta, scaling = rope_settings(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    partial = float(scaling.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
    return LlamaArgs(hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
                     kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                     head_dim=head_dim,
                     intermediate=config.intermediate_size, vocab=config.vocab_size, rms_eps=config.rms_norm_eps,
                     qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(getattr(config, "mlp_bias", False)),
                     tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)), rope_theta=theta,
                     rope_scaling=scaling, rotary_dim=int(head_dim * partial),
                     rope_interleaved=bool(getattr(config, "rope_interleaved", config.model_type == "glm")),
                     max_positions=getattr(config, "max_position_embeddings", 2048),
                     sliding_window=_sliding_window(config),
                     dropout=float(getattr(config, "attention_dropout", 0.0) or 0.0))


def _attention_biases(config) -> tuple[bool, bool]:
    """(q/k/v bias, o bias): `attention_bias` covers all four; Qwen2 and GLM bias q/k/v only,
    ChatGLM says which in its own fields (`attention_output_bias`)."""
    if config.model_type == "qwen2":
        return True, False
    if config.model_type == "glm":
        return bool(config.attention_bias), False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bool(getattr(config, "attention_output_bias", bias))


def _sliding_window(config) -> Optional[int]:
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None  # Qwen2 configs carry a window they do not use unless asked
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None
