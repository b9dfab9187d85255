"""Vocabulary expansion (further pre-training on a language the tokenizer covers badly): add
tokens to the tokenizer and grow the embedding and the LM head to match; each new row starts at
the mean of the old rows (a neutral token rather than noise, which keeps the first steps' loss
sane). `collie expand-vocab` writes the result as an HF directory that any layout then trains.

Under tensor parallel the grown vocabulary need not divide by tp_size: DTensor shards the
embedding and head unevenly, so no padding rows exist — none to mask out of the loss and none in
the export, whose vocab_size is exactly the tokenizer's length.
"""

from __future__ import annotations

import torch
from torch import nn

from collie.models.base import is_meta
from collie.models.registry import spec_of

_VOCAB_FIELDS = ("vocab_size", "padded_vocab_size")


def expand_vocabulary(model: nn.Module, tokenizer, tokens: list[str], special: bool = False) -> int:
    """Add `tokens` to `tokenizer` and grow `model` to its new length; returns how many were
    added (a string the tokenizer already encodes as one token is not added again). Call it on a
    loaded model, before a Trainer parallelizes it."""
    if not tokens or any(not isinstance(t, str) or not t for t in tokens):
        raise ValueError("tokens: give a non-empty list of non-empty strings")
    missing = [t for t in dict.fromkeys(tokens) if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    added = tokenizer.add_tokens(missing, special_tokens=special) if missing else 0
    resize_vocabulary(model, len(tokenizer))
    return added


def resize_vocabulary(model: nn.Module, size: int) -> None:
    """Grow the embedding and head of a single-device model to `size` rows (mean-initialised)."""
    if is_meta(model):
        raise ValueError("expand_vocabulary: the model has no weights yet (loaded for a multi-process launch); "
                         "expand it first in one process (collie expand-vocab MODEL OUT --tokens-file FILE)")
    spec = spec_of(model)
    embedding, head = spec.edge(model, "embedding"), spec.edge(model, "head")
    old = embedding.weight.shape[0]
    if size < old:
        raise ValueError(f"vocabulary: the tokenizer has {size} tokens, fewer than the model's {old}; "
                         "shrinking a vocabulary is not supported")
    if size == old:
        return
    tied = head is not None and head.weight is embedding.weight
    embedding.weight = nn.Parameter(_grown(embedding.weight, size), requires_grad=embedding.weight.requires_grad)
    embedding.num_embeddings = size
    if tied:
        head.weight = embedding.weight
    elif head is not None:
        head.weight = nn.Parameter(_grown(head.weight, size), requires_grad=head.weight.requires_grad)
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(_grown(head.bias, size), requires_grad=head.bias.requires_grad)
    if head is not None:
        head.out_features = size
    for config in {id(c): c for c in (model.config, getattr(model, "export_config", None)) if c is not None}.values():
        for name in _VOCAB_FIELDS:
            if getattr(config, name, None) == old:
                setattr(config, name, size)


def _grown(weight: torch.Tensor, size: int) -> torch.Tensor:
    old = weight.detach()
    mean = old.to(torch.float64).mean(dim=0, keepdim=True).to(old.dtype)
    return torch.cat([old, mean.expand(size - old.shape[0], *old.shape[1:])], dim=0).contiguous()
