"""Packing (`data.packing: true`): short samples share a row of up to `max_length` tokens, so
batches carry almost no padding.

A packed row's attention mask holds document numbers (1, 1, 1, 2, 2, 0 …; 0 is padding) instead
of ones: the model then lets each token attend only to earlier tokens of its own document and
restarts positions at every document, so a packed sample computes what it would alone. Each
document's first label is ignored, as the padder does for every row, so the loss (a mean over
the trained tokens) equals the unpacked loss.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from collie.models.loss import IGNORE_INDEX


class PackedDataset(Dataset):
    """Items of `dataset` packed greedily, in order, into rows of at most `max_length` tokens;
    an item longer than that keeps a row of its own (truncated as the dataset does)."""

    def __init__(self, dataset, max_length: int) -> None:
        self.source = dataset
        self.tokenizer = getattr(dataset, "tokenizer", None)
        self.rows: list[dict] = []
        row: dict = {"input_ids": [], "labels": [], "document_ids": []}
        for index in range(len(dataset)):
            item = dataset[index]
            ids, labels = list(item["input_ids"])[:max_length], list(item["labels"])[:max_length]
            if row["input_ids"] and len(row["input_ids"]) + len(ids) > max_length:
                self.rows.append(row)
                row = {"input_ids": [], "labels": [], "document_ids": []}
            document = (row["document_ids"][-1] if row["document_ids"] else 0) + 1
            row["input_ids"] += ids
            row["labels"] += [IGNORE_INDEX, *labels[1:]] if labels else []
            row["document_ids"] += [document] * len(ids)
        if row["input_ids"]:
            self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]
