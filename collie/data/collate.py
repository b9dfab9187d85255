"""Padding a list of items into a batch."""

from __future__ import annotations

from typing import Optional

import torch

from collie.models.loss import IGNORE_INDEX


class ColliePadder:
    """Pads `input_ids` (with `pad_token_id`) and `labels` (with −100) to the longest item.

    Right padding is the training default: with causal attention, padding on the right never
    changes the logits of real tokens, so the model can skip the mask and use flash attention.
    Generation needs left padding, so prompts end where decoding starts.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right",
                 max_length: Optional[int] = None, pad_to: Optional[int] = None, multiple_of: int = 1) -> None:
        """`pad_to` pads every batch to exactly that length (pipeline stages exchange
        fixed-shape activations); otherwise batches are padded to their longest item, rounded
        up to `multiple_of` (sequence parallel splits the sequence evenly over ranks)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: {padding_side!r} is not one of left, right")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.max_length = max_length
        self.pad_to = pad_to
        self.multiple_of = multiple_of

    def __call__(self, items: list[dict]) -> dict:
        longest = self.pad_to or max(len(item["input_ids"]) for item in items)
        longest = -(-longest // self.multiple_of) * self.multiple_of
        if self.max_length is not None:
            longest = min(longest, self.max_length)
        batch: dict = {
            "input_ids": self._stack([item["input_ids"] for item in items], longest, self.pad_token_id),
            # Packed rows (collie.data.packing) number their documents instead of marking them with ones.
            "attention_mask": self._stack([item.get("document_ids") or [1] * len(item["input_ids"])
                                           for item in items], longest, 0),
        }
        if "labels" in items[0]:
            # A sequence's first label is never a target (nothing precedes it), but after left
            # padding a pad would precede it and predict it: ignore it, so both sides agree.
            labels = [[IGNORE_INDEX, *item["labels"][1:]] if item["labels"] else [] for item in items]
            batch["labels"] = self._stack(labels, longest, IGNORE_INDEX)
        for key in items[0]:
            if key not in batch and key != "document_ids":
                batch[key] = [item[key] for item in items]
        return batch

    def _stack(self, rows: list[list[int]], length: int, fill: int) -> torch.Tensor:
        out = torch.full((len(rows), length), fill, dtype=torch.long)
        for i, row in enumerate(rows):
            row = row[:length]
            if self.padding_side == "right":
                out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            elif row:
                out[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        return out
