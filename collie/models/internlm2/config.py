"""InternLM2 / 2.5's config.json, which transformers does not ship (the hub's copies come with
remote code, which collie never runs). Field names are the published ones; the LLaMA network
reads them through `attribute_map` (`bias` is both the attention and output-projection bias)."""

from __future__ import annotations

import warnings

from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"
    attribute_map = {"attention_bias": "bias"}

    def __init__(self, vocab_size: int = 103168, hidden_size: int = 4096, intermediate_size: int = 11008,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32, num_key_value_heads: int = None,
                 hidden_act: str = "silu", max_position_embeddings: int = 2048, initializer_range: float = 0.02,
                 rms_norm_eps: float = 1e-6, use_cache: bool = True, pad_token_id: int = 0, bos_token_id: int = 1,
                 eos_token_id: int = 2, tie_word_embeddings: bool = False, bias: bool = True,
                 rope_theta: float = 10000.0, rope_scaling: dict = None, attn_implementation: str = "eager",
                 **kwargs) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        with warnings.catch_warnings():  # transformers 5 files it under `rope_parameters`; see to_dict
            warnings.filterwarnings("ignore", message=".*rope_scaling.*deprecated")
            self.rope_scaling = rope_scaling
        self.attn_implementation = attn_implementation
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict:
        """As published: transformers 5 keeps rotary settings as `rope_parameters`, but the
        format (and the remote code that reads it) has `rope_theta` and `rope_scaling`."""
        out = super().to_dict()
        params = out.pop("rope_parameters", None) or {}
        kind = params.get("rope_type", "default")
        out["rope_theta"] = params.get("rope_theta", out.get("rope_theta"))
        out["rope_scaling"] = None if kind == "default" else {"type": kind, "factor": params["factor"]}
        return out
