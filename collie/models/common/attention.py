"""Multi-head attention with grouped key/value heads and rotary positions, and the masks and
positions it is run with (left padding, packed documents, sliding windows, a KV cache)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from collie.models.common.args import DecoderArgs
from collie.models.common.attention_layout import AttentionLayout, CacheLayout
from collie.models.common.rope import apply_rope
from collie.models.kv_cache import KVCache
from collie.models.layers import Linear


class Attention(nn.Module):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = args.head_dim
        self.rope_interleaved = args.rope_interleaved
        self.q_proj = Linear(args.hidden, args.heads * args.head_dim, bias=args.qkv_bias)
        self.k_proj = Linear(args.hidden, args.kv_heads * args.head_dim, bias=args.qkv_bias)
        self.v_proj = Linear(args.hidden, args.kv_heads * args.head_dim, bias=args.qkv_bias)
        self.o_proj = Linear(args.heads * args.head_dim, args.hidden, bias=args.o_bias)
        self.dropout = args.dropout

    def forward(self, x, cos, sin, mask: Union[torch.Tensor, AttentionLayout, None],
                kv_cache: Union[KVCache, CacheLayout, None]):
        batch, seq, _ = x.shape
        # -1 instead of the head count: under tensor parallel each rank holds a slice of heads.
        q = self.q_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
        q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        if isinstance(kv_cache, CacheLayout):  # continuous batching: the cache lays out attention
            return self.o_proj(kv_cache.attend_new(self.layer_idx, q, k, v).transpose(1, 2).reshape(batch, seq, -1))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        repeats = q.shape[1] // k.shape[1]
        if repeats > 1:
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, AttentionLayout):
            out = mask.attend(q, k, v, dropout)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout,
                is_causal=mask is None)  # None only without cached keys: plain causal is exact
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin, self.rope_interleaved)


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
