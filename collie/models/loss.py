"""Causal language-modelling loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from collie.dtypes import at_least_fp32

IGNORE_INDEX = -100


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   reduction: str = "mean") -> torch.Tensor:
    """Cross entropy of token t+1 given tokens ≤ t; labels are aligned with input_ids."""
    shift_logits = logits[..., :-1, :].reshape(-1, logits.shape[-1])
    shift_logits = shift_logits.to(at_least_fp32(shift_logits.dtype))
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index, reduction=reduction)


def chunked_lm_loss(hidden: torch.Tensor, head: nn.Module, labels: torch.Tensor, chunk_tokens: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """`causal_lm_loss(head(hidden), labels)` without whole logits: `chunk_tokens` positions at a
    time, each chunk's logits are made, summed into the loss and dropped; backward recomputes
    them one chunk at a time (activation checkpointing per chunk). Under loss_parallel the
    chunks' logits are vocabulary shards, as the head makes them."""
    from torch.utils.checkpoint import checkpoint

    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    y = labels[..., 1:].reshape(-1).to(h.device)

    def chunk_sum(h_chunk: torch.Tensor, y_chunk: torch.Tensor) -> torch.Tensor:
        logits = head(h_chunk)
        return F.cross_entropy(logits.to(at_least_fp32(logits.dtype)), y_chunk, ignore_index=ignore_index,
                               reduction="sum")

    total = None
    for start in range(0, h.shape[0], chunk_tokens):
        part = checkpoint(chunk_sum, h[start:start + chunk_tokens], y[start:start + chunk_tokens],
                          use_reentrant=False, preserve_rng_state=False)
        total = part if total is None else total + part
    return total / (y != ignore_index).sum()


def count_loss_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions `causal_lm_loss` averages over."""
    return int((labels[..., 1:] != ignore_index).sum())


class GPTLMLoss(nn.Module):
    """CoLLiE's loss object: mean next-token cross entropy over non-ignored labels."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(logits, labels, self.ignore_index)
