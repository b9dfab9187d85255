"""ChatGLM-6B (v1)'s positions and attention mask, computed from the token ids: a prompt (before
the bos token `<sop>`) that attends both ways, then an answer that attends causally, with 2-D
positions (see `collie.models.chatglm.model`). The spec hands `glm_positions` to every
pipeline stage, so it lives apart from the model."""

from __future__ import annotations

from typing import Optional

import torch

from collie.models.common.attention import is_packed
from collie.models.kv_cache import KVCache

_CACHE_KEY = "chatglm_v1_prompt"


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
