"""Autoregressive decoding with a KV cache: greedy or sampled (temperature, top-k, top-p)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributed as dist

from collie.dtypes import at_least_fp32
from collie.tensors import whole


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
             max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, eos_token_id: Union[int, list[int], None] = None,
             pad_token_id: Optional[int] = None, generator: Optional[torch.Generator] = None,
             stop_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Return prompt + generated ids, [batch, prompt_len + n]; rows that hit EOS are padded.

    Prompts in a batch must be left-padded (`attention_mask` marks real tokens), as with HF.
    `stop_group`: ranks that must run as many forwards as each other (data-parallel ranks of a
    sharded model, which gathers its weights in every forward); decoding stops when the rows of
    every one of them have finished.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature: must be > 0 when sampling, got {temperature}")
    eos = torch.tensor(_as_list(eos_token_id), device=input_ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
    batch, prompt_len = input_ids.shape
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    cache = model.new_kv_cache(prompt_len + max_new_tokens)
    was_training = model.training
    model.eval()
    try:
        # whole(): under loss_parallel the logits come sharded by vocabulary.
        logits = whole(model(input_ids, attention_mask=mask, kv_cache=cache).logits)[:, -1]
        tokens = [input_ids]
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            logits = logits.to(at_least_fp32(logits.dtype))
            next_token = choose_next(logits, do_sample, temperature, top_k, top_p, generator)
            next_token = torch.where(finished, torch.full_like(next_token, pad), next_token)
            tokens.append(next_token[:, None])
            if len(eos):
                finished |= torch.isin(next_token, eos)
            if step == max_new_tokens - 1 or finished_everywhere(finished, stop_group):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = whole(model(next_token[:, None], attention_mask=mask, kv_cache=cache).logits)[:, -1]
    finally:
        model.train(was_training)
    return torch.cat(tokens, dim=1)


def finished_everywhere(finished: torch.Tensor, group: Optional[dist.ProcessGroup]) -> bool:
    """Whether every row has finished, on this rank and on every rank of `group`."""
    if group is None:
        return bool(finished.all())
    unfinished = (~finished).sum().reshape(1)
    dist.all_reduce(unfinished, group=group)
    return int(unfinished.item()) == 0


# Below this temperature sampling is greedy (its limit): dividing logits by 1e-300 overflows to inf,
# and the probabilities become NaN.
GREEDY_BELOW = 1e-6


def choose_next(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int, top_p: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """The next token of each row of `logits` [batch, vocab]: argmax, or a sample after
    temperature, top-k and top-p (nucleus) filtering."""
    if not do_sample or temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_list(value: Union[int, list[int], None]) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


class GenerationMixin:
    """`generate` for anything that runs like a causal LM: `forward(input_ids, attention_mask=,
    kv_cache=)` returning `.logits`, plus `new_kv_cache(max_len)`."""

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 **kwargs) -> torch.Tensor:
        """Prompt + continuation ids (see `collie.generation.generate` for the options)."""
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)
