"""ChatGLM-6B (v1), single device. Its differences from the LLaMA network:

- LayerNorm with biases; a GELU (tanh) MLP with biases; biases on q/k/v and the output projection.
- DeepNorm-style residuals: each sub-layer adds its output to its *normalised* input scaled by
  alpha = sqrt(2 · layers).
- 2-D rotary positions: the first half of each head rotates with the token's position, the
  second half with its block position (rotate-half pairing within each half).
- A prefix LM: the prompt (everything before the bos token `<sop>`) attends both ways; from
  `<sop>` on, tokens attend causally. Positions count prompt tokens; from `<sop>` on, the
  position stays at the [gMASK] (or [MASK]) token's and the block position counts 1, 2, 3, …

Positions, block positions and the prompt flags come from the token ids (`positions.glm_positions`);
a later pipeline stage, which sees hidden states, receives them as `position_ids` [batch, 3, seq].
During generation the prompt's layout is kept in the KV cache for the following steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from collie.models.chatglm.positions import glm_positions, prefix_mask
from collie.models.common.args import DecoderArgs
from collie.models.common.attention import Attention
from collie.models.common.decoder import LlamaForCausalLM
from collie.models.common.mlp import GeluMLP
from collie.models.common.rope import apply_rope, rope_cos_sin
from collie.models.layers import LayerNorm


class TwoDAttention(Attention):
    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # cos/sin hold the position stream's table, then the block position stream's.
        half, table = x.shape[-1] // 2, cos.shape[-1] // 2
        return torch.cat([apply_rope(x[..., :half], cos[..., :table], sin[..., :table]),
                          apply_rope(x[..., half:], cos[..., table:], sin[..., table:])], dim=-1)


class GLMBlock(nn.Module):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.alpha = math.sqrt(2 * args.layers)
        self.input_layernorm = LayerNorm(args.hidden, args.rms_eps)
        self.self_attn = TwoDAttention(args, layer_idx)
        self.post_attention_layernorm = LayerNorm(args.hidden, args.rms_eps)
        self.mlp = GeluMLP(args)

    def forward(self, h, cos, sin, mask=None, kv_cache=None):
        x = self.input_layernorm(h)
        h = x * self.alpha + self.self_attn(x, cos, sin, mask, kv_cache)
        x = self.post_attention_layernorm(h)
        return x * self.alpha + self.mlp(x)


class ChatGLMForCausalLM(LlamaForCausalLM):
    block_cls = GLMBlock
    norm_cls = LayerNorm

    def rotary_and_mask(self, input_ids, attention_mask, position_ids, kv_cache, dtype):
        seq = input_ids.shape[1]
        past = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            position_ids = glm_positions(input_ids, attention_mask, self.config, kv_cache)
        positions, blocks, prompt = position_ids.unbind(1)
        inv_freq = self._inv_freq.to(positions.device)
        cos1, sin1 = rope_cos_sin(inv_freq, positions, dtype)
        cos2, sin2 = rope_cos_sin(inv_freq, blocks, dtype)
        cos, sin = torch.cat([cos1, cos2], dim=-1), torch.cat([sin1, sin2], dim=-1)
        return cos, sin, prefix_mask(attention_mask, prompt, seq, past, positions.device)
