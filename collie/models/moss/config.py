"""MOSS (moss-moon-003)'s config.json, which transformers does not ship (the hub's copy comes with
remote code, which collie never runs). Its fields are CodeGen's; the network reads them through
`attribute_map` and `moss_args`."""

from __future__ import annotations

from typing import Optional

from transformers import PretrainedConfig


class MossConfig(PretrainedConfig):
    model_type = "moss"
    attribute_map = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
                     "max_position_embeddings": "n_positions"}

    def __init__(self, vocab_size: int = 107008, n_positions: int = 2048, n_ctx: int = 2048, n_embd: int = 4096,
                 n_layer: int = 28, n_head: int = 16, rotary_dim: int = 64, n_inner: Optional[int] = None,
                 activation_function: str = "gelu_new", resid_pdrop: float = 0.0, embd_pdrop: float = 0.0,
                 attn_pdrop: float = 0.0, layer_norm_epsilon: float = 1e-5, initializer_range: float = 0.02,
                 use_cache: bool = True, bos_token_id: int = 106028, eos_token_id: int = 106068,
                 tie_word_embeddings: bool = False, **kwargs) -> None:
        self.vocab_size = vocab_size
        self.n_ctx = n_ctx
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.rotary_dim = rotary_dim
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)
