"""The LLaMA network, single device, plain PyTorch: LLaMA 1/2/3, Qwen2, Mistral (sliding
window) and InternLM 1/2 checkpoints all load into it (`collie.models.llama.args`).

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
from collie.models.llama.args import LlamaArgs, llama_args
from collie.models.llama.rope import (apply_rope, dynamic_ntk_frequencies, inverse_frequencies, rope_cos_sin,
                                      scaling_kind)
from collie.models.loss import causal_lm_loss, chunked_lm_loss


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = args.head_dim
        self.rope_interleaved = args.rope_interleaved
        self.q_proj = Linear(args.hidden, args.heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = Linear(args.hidden, args.kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = Linear(args.hidden, args.kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = Linear(args.heads * args.head_dim, args.hidden, bias=args.o_bias)
        self.dropout = args.dropout

    def forward(self, x, cos, sin, mask: Optional[torch.Tensor], kv_cache: Optional[KVCache]):
        batch, seq, _ = x.shape
        # -1 instead of the head count: under tensor parallel each rank holds a slice of heads.
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
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

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin, self.rope_interleaved)


class MLP(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.gate_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.up_proj = Linear(args.hidden, args.intermediate, bias=args.mlp_bias)
        self.down_proj = Linear(args.intermediate, args.hidden, bias=args.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden, args.rms_eps)
        self.self_attn = Attention(args, layer_idx)
        self.post_attention_layernorm = RMSNorm(args.hidden, args.rms_eps)
        self.mlp = MLP(args)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaForCausalLM(CollieModel):
    """Decoder-only LLaMA. `forward(input_ids, attention_mask, labels, position_ids, kv_cache)`.

    Networks that differ only in their blocks and norms (MOSS, ChatGLM v1) subclass it and set
    the class attributes below; the forward pass, positions, masks and KV cache are shared."""

    read_args = staticmethod(llama_args)
    block_cls: type = DecoderLayer  # (args, layer index) -> a block
    norm_cls: type = RMSNorm  # (dim, eps) -> the final norm
    head_bias = False

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.args = args = self.read_args(config)
        self.embed_tokens = nn.Embedding(args.vocab, args.hidden)
        self.layers = nn.ModuleDict({str(i): self.block_cls(args, i) for i in range(args.layers)})
        self.norm = self.norm_cls(args.hidden, args.rms_eps)
        self.lm_head = Linear(args.hidden, args.vocab, bias=self.head_bias)
        if args.tied_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Prompt tuning's trained embeddings for the positions the padder reserves (collie.peft).
        self.prompt: Optional[nn.Module] = None
        # A plain attribute, not a buffer: it is recomputed cheaply, never checkpointed,
        # and survives meta-device construction.
        self._inv_freq = inverse_frequencies(args.rotary_dim, args.rope_theta, args.rope_scaling)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                kv_cache: Optional[KVCache] = None) -> CausalLMOutput:
        # Sizes from the input, not from h: under sequence parallel h holds a slice of the sequence.
        seq = input_ids.shape[1]
        h = self.embed_tokens(input_ids) if self.embed_tokens is not None else input_ids
        if self.embed_tokens is not None and self.compute_dtype is not None:
            h = h.to(self.compute_dtype)  # activations carry the compute dtype from here on
        past = kv_cache.length if kv_cache is not None else 0
        if self.prompt is not None and past == 0:
            h = self.prompt(h)  # prompt tuning: the prompt takes the reserved first positions
        cos, sin, mask = self.rotary_and_mask(input_ids, attention_mask, position_ids, kv_cache, h.dtype)
        for layer in self.layers.values():
            h = layer(h, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        if self.norm is not None:
            h = self.norm(h)
        if self.lm_head is None:
            return CausalLMOutput(logits=None, hidden_states=h, kv_cache=kv_cache)
        if labels is not None and self.loss_chunk_tokens > 0:
            return CausalLMOutput(logits=None, loss=chunked_lm_loss(h, self.lm_head, labels, self.loss_chunk_tokens),
                                  kv_cache=kv_cache)
        logits = self.lm_head(h)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, kv_cache=kv_cache)

    def rotary_and_mask(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                        position_ids: Optional[torch.Tensor], kv_cache: Optional[KVCache], dtype: torch.dtype):
        """The rotary tables (cos, sin) and the attention mask of this forward. `input_ids` gives
        the sizes only (a later pipeline stage receives hidden states in its place)."""
        batch, seq = input_ids.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(batch, seq, past, attention_mask, input_ids.device)
        cos, sin = rope_cos_sin(self._frequencies(position_ids), position_ids, dtype)
        return cos, sin, attention_bias_mask(attention_mask, seq, past, input_ids.device, self.args.sliding_window)

    def _frequencies(self, position_ids: torch.Tensor) -> torch.Tensor:
        if self._inv_freq.device != position_ids.device:
            self._inv_freq = self._inv_freq.to(position_ids.device)
        args = self.args
        if scaling_kind(args.rope_scaling) == "dynamic":
            needed = int(position_ids.max()) + 1  # a host sync, only for dynamic scaling
            if needed > args.max_positions:
                return dynamic_ntk_frequencies(args.rotary_dim, args.rope_theta, float(args.rope_scaling["factor"]),
                                               args.max_positions, needed).to(position_ids.device)
        return self._inv_freq

    def new_kv_cache(self, max_len: int) -> KVCache:
        return KVCache(max_len)

    def reset_parameters(self, init_method: str = "normal", seed: int = 0) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))  # HF's default
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(init_tensor(name, tuple(param.shape), seed, std, init_method))


def default_position_ids(batch: int, seq: int, past: int, attention_mask: Optional[torch.Tensor],
                         device: torch.device) -> torch.Tensor:
    """Positions count real tokens only, so left-padded prompts start at 0 (as HF generate);
    in a packed row (document numbers in the mask) they restart at every document."""
    if attention_mask is None:
        return torch.arange(past, past + seq, device=device).unsqueeze(0).expand(batch, -1)
    real = (attention_mask > 0).long()
    positions = real.cumsum(-1) - 1
    if is_packed(attention_mask):
        # Subtract the count of real tokens before each token's document.
        starts = torch.cat([torch.ones_like(attention_mask[:, :1], dtype=torch.bool),
                            attention_mask[:, 1:] != attention_mask[:, :-1]], dim=1)
        before = torch.where(starts, positions, torch.zeros_like(positions)).cummax(-1).values
        positions = positions - before
    return positions.clamp(min=0)[:, past:past + seq]


def is_packed(attention_mask: torch.Tensor) -> bool:
    """A mask holding document numbers (data.packing) rather than ones and zeros (one host sync)."""
    return bool((attention_mask > 1).any())


def attention_bias_mask(attention_mask: Optional[torch.Tensor], q_len: int, past: int, device: torch.device,
                        sliding_window: Optional[int] = None) -> Optional[torch.Tensor]:
    """A boolean [batch, 1, q, k] mask, or None when plain causal attention is exact for every
    real token (no cache, no window shorter than the sequence, and padding, if any, only on
    the right) so SDPA can take its flash path. Left padding needs the mask: real tokens must
    not attend to the pads before them. A sliding window keeps the last `sliding_window`
    positions (the token itself included), as Mistral does."""
    total = past + q_len
    windowed = sliding_window is not None and total > sliding_window
    # (A packed row with several documents is never "right padding only": its numbers increase.)
    if past == 0 and not windowed and (attention_mask is None or only_right_padding(attention_mask)):
        return None
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = k_pos <= q_pos
    if windowed:
        allowed = allowed & (q_pos - k_pos < sliding_window)
    allowed = allowed[None, None]
    if attention_mask is not None:
        valid = attention_mask[:, None, None, :total].bool()
        if past == 0 and is_packed(attention_mask):  # packed documents: each sees only itself
            valid = valid & (attention_mask[:, None, :q_len, None] == attention_mask[:, None, None, :total])
        # The diagonal stays open so that rows of padding tokens never softmax over nothing.
        allowed = (allowed & valid) | (k_pos == q_pos)[None, None]
    return allowed


def only_right_padding(attention_mask: torch.Tensor) -> bool:
    """True when every row is real tokens followed by padding (one host sync on GPUs)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
