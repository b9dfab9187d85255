"""InternLM (v1)'s config.json, which transformers does not ship. Published fields: `bias` (on
q/k/v and the output projection) and `rotary` ({"base", "type": "dynamic" | "origin",
"scaling_factor"}); the LLaMA network reads them as `attention_bias`, `rope_theta` and
`rope_scaling`, and `to_dict` writes the published fields back."""

from __future__ import annotations

import warnings

from transformers import PretrainedConfig

_DERIVED = ("rope_theta", "rope_scaling", "rope_parameters")


class InternLMConfig(PretrainedConfig):
    model_type = "internlm"
    attribute_map = {"attention_bias": "bias"}

    def __init__(self, vocab_size: int = 103168, hidden_size: int = 4096, intermediate_size: int = 11008,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32, hidden_act: str = "silu",
                 max_position_embeddings: int = 2048, initializer_range: float = 0.02, rms_norm_eps: float = 1e-6,
                 use_cache: bool = True, pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2,
                 tie_word_embeddings: bool = False, bias: bool = True, rotary: dict = None, **kwargs) -> None:
        for key in _DERIVED:  # a config.json written by other tools may carry them; `rotary` rules
            kwargs.pop(key, None)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rotary = dict(rotary or {"base": 10000, "type": "dynamic"})
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.rope_theta = float(self.rotary.get("base", 10000))
        dynamic = self.rotary.get("type", "origin") == "dynamic"
        with warnings.catch_warnings():  # transformers 5 files it under `rope_parameters`
            warnings.filterwarnings("ignore", message=".*rope_scaling.*deprecated")
            self.rope_scaling = {"rope_type": "dynamic", "factor": float(self.rotary.get("scaling_factor", 1.0))} \
                if dynamic else None

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in (*_DERIVED, "num_key_value_heads"):
            out.pop(key, None)
        return out
