"""LLaMA 1/2/3 (and Qwen2/InternLM-style biases), single device, plain PyTorch.

Knows nothing about parallelism: tensor/pipeline/data parallel are applied from outside
(`collie.distributed`). Layers live in a `ModuleDict` keyed by index so a pipeline stage
can drop the layers it does not own and keep checkpoint names stable; a stage without
`embed_tokens` takes hidden states, one without `lm_head` returns them (`hidden_states`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from collie.models.base import CausalLMOutput, CollieModel
from collie.models.init import init_tensor
from collie.models.kv_cache import KVCache
from collie.models.layers import Linear, RMSNorm
from collie.models.llama.rope import apply_rope, inverse_frequencies, rope_cos_sin, rope_settings
from collie.models.loss import causal_lm_loss


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = head_dim_of(config)
        dim = config.hidden_size
        qkv_bias, o_bias = attention_biases(config)
        self.q_proj = Linear(dim, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(dim, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(dim, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, dim, bias=o_bias)
        self.dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)

    def forward(self, x, cos, sin, mask: Optional[torch.Tensor], kv_cache: Optional[KVCache]):
        batch, seq, _ = x.shape
        # -1 instead of the head count: under tensor parallel each rank holds a slice of heads.
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        repeats = q.shape[1] // k.shape[1]
        if repeats > 1:
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None)  # None only without cached keys: plain causal is exact
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class MLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act: {act!r} is not supported by the LLaMA family (expected 'silu')")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(CollieModel):
    """Decoder-only LLaMA. `forward(input_ids, attention_mask, labels, position_ids, kv_cache)`."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.head_dim = head_dim_of(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleDict(
            {str(i): DecoderLayer(config, i) for i in range(config.num_hidden_layers)})
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if getattr(config, "tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight
        theta, scaling = rope_settings(config)
        # A plain attribute, not a buffer: it is recomputed cheaply, never checkpointed,
        # and survives meta-device construction.
        self._inv_freq = inverse_frequencies(self.head_dim, theta, scaling)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None) -> CausalLMOutput:
        # Sizes from the input, not from h: under sequence parallel h holds a slice of the sequence.
        batch, seq = input_ids.shape[:2]
        h = self.embed_tokens(input_ids) if self.embed_tokens is not None else input_ids
        if self.embed_tokens is not None and self.compute_dtype is not None:
            h = h.to(self.compute_dtype)  # activations carry the compute dtype from here on
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, past, attention_mask, input_ids.device)
        if self._inv_freq.device != input_ids.device:
            self._inv_freq = self._inv_freq.to(input_ids.device)
        cos, sin = rope_cos_sin(self._inv_freq, position_ids, h.dtype)
        mask = attention_bias_mask(attention_mask, seq, past, input_ids.device)
        for layer in self.layers.values():
            h = layer(h, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        if self.norm is not None:
            h = self.norm(h)
        if self.lm_head is None:
            return CausalLMOutput(logits=None, hidden_states=h, kv_cache=kv_cache)
        logits = self.lm_head(h)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, kv_cache=kv_cache)

    def new_kv_cache(self, max_len: int) -> KVCache:
        return KVCache(max_len)

    def reset_parameters(self, init_method: str = "normal", seed: int = 0) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(init_tensor(name, tuple(param.shape), seed, std, init_method))


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def attention_biases(config) -> tuple[bool, bool]:
    """(q/k/v bias, o bias): LLaMA's `attention_bias` covers all four; Qwen2 biases q/k/v only."""
    if getattr(config, "model_type", "llama") == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def default_position_ids(batch: int, seq: int, past: int, attention_mask: Optional[torch.Tensor],
                         device: torch.device) -> torch.Tensor:
    """Positions count real tokens only, so left-padded prompts start at 0 (as HF generate)."""
    if attention_mask is None:
        return torch.arange(past, past + seq, device=device).unsqueeze(0).expand(batch, -1)
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, past:past + seq]


def attention_bias_mask(attention_mask: Optional[torch.Tensor], q_len: int, past: int,
                        device: torch.device) -> Optional[torch.Tensor]:
    """A boolean [batch, 1, q, k] mask, or None when plain causal attention is exact for every
    real token (no cache, and padding, if any, only on the right) so SDPA can take its flash
    path. Left padding needs the mask: real tokens must not attend to the pads before them."""
    if past == 0 and (attention_mask is None or only_right_padding(attention_mask)):
        return None
    total = past + q_len
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]
    if attention_mask is not None:
        valid = attention_mask[:, None, None, :total].bool()
        # The diagonal stays open so that rows of padding tokens never softmax over nothing.
        allowed = (allowed & valid) | (k_pos == q_pos)[None, None]
    return allowed


def only_right_padding(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens followed by padding (one host sync on GPUs)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
