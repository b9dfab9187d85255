"""ChatGLM-6B (v1), single device. Its differences from the LLaMA network:

- LayerNorm with biases; a GELU (tanh) MLP with biases; biases on q/k/v and the output projection.
- DeepNorm-style residuals: each sub-layer adds its output to its *normalised* input scaled by
  alpha = sqrt(2 · layers).
- 2-D rotary positions: the first half of each head rotates with the token's position, the
  second half with its block position (rotate-half pairing within each half).
- A prefix LM: the prompt (everything before the bos token `<sop>`) attends both ways; from
  `<sop>` on, tokens attend causally. Positions count prompt tokens; from `<sop>` on, the
  position stays at the [gMASK] (or [MASK]) token's and the block position counts 1, 2, 3, …

Positions, block positions and the prompt flags come from the token ids (`glm_positions`); a
later pipeline stage, which sees hidden states, receives them as `position_ids` [batch, 3, seq].
During generation the prompt's layout is kept in the KV cache for the following steps.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from collie.models.kv_cache import KVCache
from collie.models.layers import LayerNorm
from collie.models.llama.args import LlamaArgs
from collie.models.llama.model import Attention, LlamaForCausalLM, is_packed
from collie.models.llama.rope import apply_rope, rope_cos_sin
from collie.models.moss.model import GeluMLP

_CACHE_KEY = "chatglm_v1_prompt"


def glm_v1_args(config) -> LlamaArgs:
    heads, hidden = config.num_attention_heads, config.hidden_size
    return LlamaArgs(hidden=hidden, layers=config.num_layers, heads=heads, kv_heads=heads, head_dim=hidden // heads,
                     intermediate=config.inner_hidden_size, vocab=config.vocab_size, rms_eps=config.layernorm_epsilon,
                     qkv_bias=True, o_bias=True, mlp_bias=True, tied_embeddings=False, rope_theta=10000.0,
                     rope_scaling={}, rotary_dim=hidden // heads // 2, rope_interleaved=False,
                     max_positions=config.max_sequence_length, sliding_window=None, dropout=0.0)


class TwoDAttention(Attention):
    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # cos/sin hold the position stream's table, then the block position stream's.
        half, table = x.shape[-1] // 2, cos.shape[-1] // 2
        return torch.cat([apply_rope(x[..., :half], cos[..., :table], sin[..., :table]),
                          apply_rope(x[..., half:], cos[..., table:], sin[..., table:])], dim=-1)


class GLMBlock(nn.Module):
    def __init__(self, args: LlamaArgs, layer_idx: int) -> None:
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


class ChatGLMv1ForCausalLM(LlamaForCausalLM):
    read_args = staticmethod(glm_v1_args)
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


def glm_positions(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], config,
                  kv_cache: Optional[KVCache] = None) -> torch.Tensor:
    """[batch, 3, seq]: position, block position, and 1 for prompt tokens (those before `<sop>`).
    Counted over real tokens, so left padding changes nothing. A prefill stores each prompt's
    layout in `kv_cache` for the decoding steps that follow."""
    batch, seq = input_ids.shape
    past = kv_cache.length if kv_cache is not None else 0
    mask = attention_mask if attention_mask is not None else torch.ones(batch, past + seq, dtype=torch.long,
                                                                         device=input_ids.device)
    if is_packed(mask):
        raise ValueError("data.packing: ChatGLM v1's prompt/answer positions need one sequence per row; "
                         "train it without packing")
    real = (mask > 0).long()
    index = (real.cumsum(-1) - 1).clamp(min=0)[:, past:past + seq]  # each token's index among real tokens
    if past == 0 or kv_cache is None or _CACHE_KEY not in kv_cache.model_state:
        starts = _first_index(input_ids == config.bos_token_id, index,
                              f"the bos token <sop> (id {config.bos_token_id}), which starts the answer")
        gmask = input_ids == config.gmask_token_id
        marks = torch.where(gmask.any(-1, keepdim=True), gmask, input_ids == config.mask_token_id)
        masks = _first_index(marks, index, f"a [gMASK] (id {config.gmask_token_id}) or [MASK] "
                                           f"(id {config.mask_token_id}) token")
        if kv_cache is not None:
            kv_cache.model_state[_CACHE_KEY] = (starts, masks)
    else:
        starts, masks = kv_cache.model_state[_CACHE_KEY]
    in_prompt = index < starts[:, None]
    positions = torch.where(in_prompt, index, masks[:, None])
    blocks = torch.where(in_prompt, torch.zeros_like(index), index - starts[:, None] + 1)
    return torch.stack([positions, blocks, in_prompt.long()], dim=1)


def _first_index(found: torch.Tensor, index: torch.Tensor, what: str) -> torch.Tensor:
    """The real-token index of the first True in each row of `found`."""
    if not bool(found.any(-1).all()):  # one host sync per prompt
        raise ValueError(f"chatglm v1: every sequence needs {what}; encode prompts with its tokenizer "
                         "(it appends [gMASK] <sop>)")
    return index.gather(1, found.long().argmax(-1)[:, None]).squeeze(1)


def prefix_mask(attention_mask: Optional[torch.Tensor], prompt: torch.Tensor, q_len: int, past: int,
                device: torch.device) -> torch.Tensor:
    """[batch, 1, q, k] booleans: causal, plus every query sees the whole prompt, minus padding."""
    total = past + q_len
    q_pos = torch.arange(past, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]
    if past == 0:  # a prefill: the prompt's keys are all here
        allowed = allowed | prompt[:, None, None, :].bool()
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :total].bool()
    return allowed | (k_pos == q_pos)[None, None]
