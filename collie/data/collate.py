"""Padding a list of items into a batch."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from collie.models.loss import IGNORE_INDEX


class ColliePadder:
    """Pads `input_ids` (with `pad_token_id`) and `labels` (with −100) to the longest item.

    Right padding is the training default: with causal attention, padding on the right never
    changes the logits of real tokens, so the model can skip the mask and use flash attention.
    Generation needs left padding, so prompts end where decoding starts.

    CoLLiE's signature works too: `ColliePadder(padding_token_id={"input_ids": id, ...},
    padding_left=True)` (its dict of pad values per field; labels pad with −100 and the attention
    mask with 0 here, always), or `ColliePadder()` (pad id 0, right padding).
    """

    def __init__(self, pad_token_id: Union[int, dict, None] = None, padding_side: Union[str, bool] = "right",
                 max_length: Optional[int] = None, pad_to: Optional[int] = None, multiple_of: int = 1, *,
                 padding_token_id: Union[int, dict, None] = None, padding_left: Optional[bool] = None) -> None:
        """`pad_to` pads every batch to exactly that length (pipeline stages exchange
        fixed-shape activations); otherwise batches are padded to their longest item, rounded
        up to `multiple_of` (sequence parallel splits the sequence evenly over ranks)."""
        if isinstance(padding_side, bool):  # CoLLiE's second positional argument is `padding_left`
            padding_side, padding_left = "right", padding_side if padding_left is None else padding_left
        if padding_left is not None:
            padding_side = "left" if padding_left else "right"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side: {padding_side!r} is not one of left, right")
        self.pad_token_id = _input_pad_id(padding_token_id if pad_token_id is None else pad_token_id)
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
            labels = [[IGNORE_INDEX, *_as_list(item["labels"])[1:]] if len(item["labels"]) else [] for item in items]
            batch["labels"] = self._stack(labels, longest, IGNORE_INDEX)
        for key in items[0]:
            if key not in batch and key != "document_ids":
                batch[key] = [item[key] for item in items]
        return batch

    def _stack(self, rows: list[Any], length: int, fill: int) -> torch.Tensor:
        out = torch.full((len(rows), length), fill, dtype=torch.long)
        for i, row in enumerate(rows):
            row = _as_list(row)[:length]
            if self.padding_side == "right":
                out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            elif row:
                out[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        return out


def _as_list(row: Any) -> list[int]:
    """A row of ids from a list, or from a tensor or array (CoLLiE's items may hold either)."""
    return row.tolist() if hasattr(row, "tolist") else list(row)


def _input_pad_id(value: Union[int, dict, None]) -> int:
    """The pad id of `input_ids` from ours (an int) or CoLLiE's per-field dict; the dict's other
    fields must be the values collie pads them with."""
    if not isinstance(value, dict):
        return 0 if value is None else int(value)
    fixed = {"labels": IGNORE_INDEX, "attention_mask": 0}
    for key, pad in value.items():
        if key != "input_ids" and fixed.get(key, pad) != pad:
            raise ValueError(f"padding_token_id: {key!r} is always padded with {fixed[key]} in collie, not {pad!r}")
    return int(value.get("input_ids", 0))
