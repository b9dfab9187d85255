"""Forwards whose attention a plain [batch, 1, q, k] mask does not describe.

- Packed documents (`AttentionLayout`): each document attends only to itself; the forward
  hands every layer the layout in place of the mask, and the layer asks it for the output.
- Continuous batching's paged batches (`CacheLayout`): sequences of different lengths, their
  new tokens laid end to end in one row, their keys in a paged cache; the layout is the KV
  cache, and a layer gives it the new queries, keys and values and gets the output back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch


class AttentionLayout(ABC):
    @abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
        """q, k, v as the layer has them ([batch, heads, tokens, head_dim], k and v with as
        many heads as q) → the output, shaped as q."""


class CacheLayout(ABC):
    """A KV cache that also lays out attention. Positions must be given (`position_ids`): the
    layout, not a mask, knows where tokens are."""

    length = 0  # keys before this forward's tokens, as a uniform cache would say: none shared

    @abstractmethod
    def use_window(self, sliding_window: Optional[int]) -> None:
        """The model's attention keeps the last `sliding_window` positions (None: all)."""

    @abstractmethod
    def attend_new(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store this forward's keys and values of `layer` ([1, kv_heads, tokens, head_dim]) and
        attend the queries ([1, heads, tokens, head_dim]) over their sequences → the output,
        shaped as q."""

    def advance(self, n: int) -> None:
        """Each sequence's cached count is kept by whoever made the layout."""
