"""ChatGLM-6B (v1)'s config.json, which transformers does not ship (the hub's copy comes with remote
code, which collie never runs). It shares `model_type: chatglm` with ChatGLM2/3; the field
`position_encoding_2d` (or `inner_hidden_size`) tells the formats apart."""

from __future__ import annotations

from typing import Optional

from transformers import PretrainedConfig


def is_chatglm_v1(config) -> bool:
    """A ChatGLM-6B config (a config.json dict or a config object) rather than ChatGLM2/3's."""
    if isinstance(config, dict):
        return config.get("model_type") == "chatglm" and ("position_encoding_2d" in config or
                                                          "inner_hidden_size" in config)
    return getattr(config, "model_type", None) == "chatglm" and hasattr(config, "position_encoding_2d")


class ChatGLMv1Config(PretrainedConfig):
    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers", "intermediate_size": "inner_hidden_size",
                     "max_position_embeddings": "max_sequence_length", "rms_norm_eps": "layernorm_epsilon"}

    def __init__(self, vocab_size: int = 130528, hidden_size: int = 4096, num_layers: int = 28,
                 num_attention_heads: int = 32, layernorm_epsilon: float = 1e-5, inner_hidden_size: int = 16384,
                 max_sequence_length: int = 2048, position_encoding_2d: bool = True, use_cache: bool = True,
                 bos_token_id: int = 130004, eos_token_id: int = 130005, mask_token_id: int = 130000,
                 gmask_token_id: int = 130001, pad_token_id: int = 3, quantization_bit: int = 0,
                 pre_seq_len: Optional[int] = None, prefix_projection: bool = False, **kwargs) -> None:
        if not position_encoding_2d:
            raise ValueError("position_encoding_2d: only ChatGLM-6B's 2-D positions are supported")
        if quantization_bit or pre_seq_len:
            raise ValueError("chatglm v1: quantized (quantization_bit) or P-tuning v2 (pre_seq_len) checkpoints are "
                             "not supported; use the full-precision model")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.layernorm_epsilon = layernorm_epsilon
        self.inner_hidden_size = inner_hidden_size
        self.max_sequence_length = max_sequence_length
        self.position_encoding_2d = position_encoding_2d
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
