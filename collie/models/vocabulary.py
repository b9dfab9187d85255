"""Vocabulary expansion (further pre-training on a language the tokenizer covers badly): add
tokens to the tokenizer and grow the embedding and the LM head to match; each new row starts at
the mean of the old rows (a neutral token rather than noise, which keeps the first steps' loss
sane). `collie expand-vocab` writes the result as an HF directory that any layout then trains.

Under tensor parallel the grown vocabulary need not divide by tp_size: DTensor shards the
embedding and head unevenly, so no padding rows exist — none to mask out of the loss and none in
the export, whose vocab_size is exactly the tokenizer's length.

A model still empty (`from_pretrained` under a multi-process launch loads its weights only once
the Trainer has split and sharded it) grows too, as CoLLiE's scripts grow it there: its shapes
grow now, and the checkpoint's embedding and head get their mean rows as they are read
(`checkpoint_rows_grown`), so every layout starts from the same weights as one process.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from collie.models.registry import spec_of

_VOCAB_FIELDS = ("vocab_size", "padded_vocab_size")


def expand_vocabulary(model: nn.Module, tokenizer, tokens: list[str], special: bool = False) -> int:
    """Add `tokens` to `tokenizer` and grow `model` to its new length; returns how many were
    added (a string the tokenizer already encodes as one token is not added again). Call it
    before a Trainer parallelizes the model."""
    if not tokens or any(not isinstance(t, str) or not t for t in tokens):
        raise ValueError("tokens: give a non-empty list of non-empty strings")
    missing = [t for t in dict.fromkeys(tokens) if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    added = tokenizer.add_tokens(missing, special_tokens=special) if missing else 0
    resize_vocabulary(model, len(tokenizer))
    return added


def resize_vocabulary(model: nn.Module, size: int) -> None:
    """Grow the embedding and head of a single-device model to `size` rows (mean-initialised)."""
    spec = spec_of(model)
    embedding, head = spec.edge(model, "embedding"), spec.edge(model, "head")
    old = embedding.weight.shape[0]
    if size < old:
        raise ValueError(f"vocabulary: the tokenizer has {size} tokens, fewer than the model's {old}; "
                         "shrinking a vocabulary is not supported")
    if size == old:
        return
    if embedding.weight.is_meta and getattr(model, "vocab_grown_from", None) is None:
        model.vocab_grown_from = old  # the rows the checkpoint holds, grown as it is read
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


def checkpoint_rows_grown(model: nn.Module, name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A checkpoint tensor read for parameter `name` of `shape`: the embedding's or head's grown
    with mean rows when the model's vocabulary was resized before its weights were loaded;
    anything else as it is."""
    grown_from: Optional[int] = getattr(model, "vocab_grown_from", None)
    if grown_from is None or tensor.shape[0] != grown_from or tensor.shape[1:] != shape[1:] or shape[0] <= grown_from:
        return tensor
    spec = spec_of(model)
    edges = {f"{spec.edge_name(which)}.{kind}" for which in ("embedding", "head") for kind in ("weight", "bias")}
    return _grown(tensor, shape[0]) if name in edges else tensor


def _grown(weight: torch.Tensor, size: int) -> torch.Tensor:
    old = weight.detach()
    mean = old.to(torch.float64).mean(dim=0, keepdim=True).to(old.dtype)
    return torch.cat([old, mean.expand(size - old.shape[0], *old.shape[1:])], dim=0).contiguous()
