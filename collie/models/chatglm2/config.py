"""ChatGLM2 / ChatGLM3's config.json, which transformers does not ship (the hub's copies come
with remote code, which collie never runs). Published field names are kept; the LLaMA network
reads them under its own names through `attribute_map`, plus the rotary settings ChatGLM
implies: the first half of each head rotates, in interleaved pairs, with base 10000 ×
`rope_ratio` (read from the config itself: the long-context variants set it)."""

from __future__ import annotations

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"
    attribute_map = {"num_hidden_layers": "num_layers", "intermediate_size": "ffn_hidden_size",
                     "vocab_size": "padded_vocab_size", "rms_norm_eps": "layernorm_epsilon",
                     "head_dim": "kv_channels", "max_position_embeddings": "seq_length",
                     "attention_bias": "add_qkv_bias", "attention_output_bias": "add_bias_linear",
                     "mlp_bias": "add_bias_linear"}

    def __init__(self, num_layers: int = 28, padded_vocab_size: int = 65024, hidden_size: int = 4096,
                 ffn_hidden_size: int = 13696, kv_channels: int = 128, num_attention_heads: int = 32,
                 seq_length: int = 2048, hidden_dropout: float = 0.0, attention_dropout: float = 0.0,
                 layernorm_epsilon: float = 1e-5, rmsnorm: bool = True,
                 apply_residual_connection_post_layernorm: bool = False, post_layer_norm: bool = True,
                 add_bias_linear: bool = False, add_qkv_bias: bool = True, bias_dropout_fusion: bool = True,
                 multi_query_attention: bool = True, multi_query_group_num: int = 2, rope_ratio: float = 1.0,
                 apply_query_key_layer_scaling: bool = True, attention_softmax_in_fp32: bool = True,
                 fp32_residual_connection: bool = False, tie_word_embeddings: bool = False, **kwargs) -> None:
        if not rmsnorm or apply_residual_connection_post_layernorm or not post_layer_norm:
            raise ValueError("chatglm: only the ChatGLM2/3 layout is supported (rmsnorm, pre-norm residuals, a final "
                             "norm); ChatGLM v1 checkpoints are a different architecture")
        self.num_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.rope_ratio = rope_ratio
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    # What the decoder network reads (`collie.models.common.args`), derived from the fields above.
    @property
    def num_key_value_heads(self) -> int:
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return 10000.0 * self.rope_ratio

    partial_rotary_factor = 0.5
    rope_interleaved = True
    hidden_act = "silu"
