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
