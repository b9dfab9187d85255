"""Datasets that turn records into token ids and labels.

Formats (detected per record): `{"text"}` (loss on every token), `{"input", "output"}`
(loss only on the output), `{"instruction", "input"?, "output"}` (Alpaca: the standard
Alpaca prompt, loss only on the output), `{"messages": [...]}` (a chat, rendered with the
tokenizer's chat template, loss on the assistant turns), `{"tokens" or "input_ids", "labels"?,
"attention_mask"?}` (already tokenized: lists or tensors, as CoLLiE takes them; positions the mask
zeroes are padding and are dropped, the padder pads the batch again).
"""

from __future__ import annotations

import copy
import random
from typing import Any, Optional, Union

from torch.utils.data import Dataset

from collie.data.chat import chat_tokens
from collie.data.records import DataError, RecordSource, load_records
from collie.models.loss import IGNORE_INDEX

_FORMATS = ("'text', 'input' + 'output', 'instruction' + 'output', 'messages', or 'tokens'/'input_ids' "
            "(+ optional 'labels', 'attention_mask')")
_ALPACA_HEAD = ("Below is an instruction that describes a task{}. Write a response that appropriately "
                "completes the request.\n\n### Instruction:\n{}\n\n")


class _RecordDataset(Dataset):
    """CoLLiE's arguments: `add_special_tokens` (bos/eos the tokenizer adds to a prompt or text),
    `shuffle` with `seed` (the records' order, drawn once), `max_length` (-1: no limit)."""

    def __init__(self, dataset: RecordSource, tokenizer: Any = None, add_special_tokens: bool = True,
                 shuffle: bool = False, seed: int = 1024, max_length: Optional[int] = None) -> None:
        self.records, self.origins = load_records(dataset)
        if shuffle:
            order = list(range(len(self.records)))
            random.Random(seed).shuffle(order)
            self.records, self.origins = [self.records[i] for i in order], [self.origins[i] for i in order]
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        self.max_length = max_length if max_length is not None and max_length > 0 else None
        for record, origin in zip(self.records, self.origins):
            self._check(record, origin)
        # Tokenized once, up front: a record that cannot be used fails now, naming its
        # origin, instead of hours into training; epochs do not re-tokenize.
        self.items = [self._item(record, origin) for record, origin in zip(self.records, self.origins)]

    @classmethod
    def from_json(cls, path: str, tokenizer: Any = None, shuffle: bool = False, seed: int = 1024) -> "_RecordDataset":
        """CoLLiE's constructor from a JSON file (a path is also taken as `dataset` itself)."""
        return cls(path, tokenizer, shuffle=shuffle, seed=seed)

    def _check(self, record: dict, origin: str) -> None:
        raise NotImplementedError

    def _item(self, record: dict, origin: str) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            # CoLLiE scripts write `train_dataset[:32]` to get an evaluation subset.
            subset = copy.copy(self)
            subset.records, subset.origins = self.records[index], self.origins[index]
            subset.items = self.items[index]
            return subset
        return self.items[index]

    def _encode(self, text: str, origin: str, key: str, special: bool) -> list[int]:
        if not isinstance(text, str):
            raise DataError(f"{origin}: '{key}' must be a string, got {type(text).__name__}")
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])


class CollieDatasetForTraining(_RecordDataset):
    """Items are `{"input_ids": [...], "labels": [...]}` with labels −100 where no loss is taken.
    `add_eos` ends a text or an answer with the tokenizer's eos (what the model learns to stop on)."""

    def __init__(self, dataset: RecordSource, tokenizer: Any = None, add_special_tokens: bool = True,
                 shuffle: bool = False, seed: int = 1024, max_length: Optional[int] = None,
                 add_eos: bool = True) -> None:
        self.add_eos = add_eos
        super().__init__(dataset, tokenizer, add_special_tokens, shuffle, seed, max_length)

    def _check(self, record: dict, origin: str) -> None:
        kind = record_format(record)
        if kind is None:
            raise DataError(f"{origin}: record has keys {sorted(record)}; expected {_FORMATS}")
        if kind != "tokens" and self.tokenizer is None:
            raise DataError(f"{origin}: a tokenizer is needed for {kind!r} records")

    def _item(self, record: dict, origin: str) -> dict:
        kind = record_format(record)
        eos = [self.tokenizer.eos_token_id] if self.add_eos and kind != "tokens" and \
            self.tokenizer.eos_token_id is not None else []
        if kind == "tokens":
            input_ids, labels = tokenized_record(record, origin)
        elif kind == "text":
            input_ids = _ended(self._encode(record["text"], origin, "text", self.add_special_tokens), eos)
            labels = list(input_ids)
        elif kind == "chat":
            input_ids, labels = chat_tokens(self.tokenizer, record["messages"], origin)
        else:
            prompt = self._encode(prompt_text(record), origin, "input", self.add_special_tokens)
            answer = _ended(self._encode(record["output"], origin, "output", False), eos)
            if self.max_length is not None and len(prompt) >= self.max_length:
                raise DataError(f"{origin}: the prompt is {len(prompt)} tokens but max_length is "
                                f"{self.max_length}, so no output token would be trained")
            input_ids = prompt + answer
            labels = [IGNORE_INDEX] * len(prompt) + answer
        if self.max_length is not None:
            input_ids, labels = input_ids[:self.max_length], labels[:self.max_length]
        return {"input_ids": input_ids, "labels": labels}


def _ended(ids: list[int], eos: list[int]) -> list[int]:
    """`ids` ending with `eos` once: a text that spells out the eos token already (CoLLiE's
    scripts append "</s>" themselves) gets no second one."""
    return ids if ids[len(ids) - len(eos):] == eos else ids + eos


class CollieDatasetForGeneration(_RecordDataset):
    """Prompts to complete: `{"text": prompt, "target": expected (optional)}`."""

    def _check(self, record: dict, origin: str) -> None:
        if "text" not in record:
            raise DataError(f"{origin}: record has keys {sorted(record)}; expected 'text' (+ optional 'target')")
        if self.tokenizer is None:
            raise DataError(f"{origin}: a tokenizer is needed for generation records")

    def _item(self, record: dict, origin: str) -> dict:
        input_ids = self._encode(record["text"], origin, "text", self.add_special_tokens)
        if self.max_length is not None:
            input_ids = input_ids[-self.max_length:]
        return {"input_ids": input_ids, "text": record["text"], "target": record.get("target")}


def prompt_text(record: dict) -> str:
    """The prompt of an input/output or Alpaca record."""
    if "instruction" not in record:
        return record["input"]
    extra = record.get("input") or ""
    if extra:
        return (_ALPACA_HEAD.format(", paired with an input that provides further context", record["instruction"])
                + f"### Input:\n{extra}\n\n### Response:\n")
    return _ALPACA_HEAD.format("", record["instruction"]) + "### Response:\n"


class CollieDatasetForPerplexity(CollieDatasetForTraining):
    """CoLLiE's dataset for perplexity evaluation: training records (the loss is taken where
    the labels are not −100)."""


def tokenized_record(record: dict, origin: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of an already tokenized record; labels default to the ids."""
    key = "tokens" if "tokens" in record else "input_ids"
    input_ids = _id_list(record[key], origin, key)
    labels = _id_list(record["labels"], origin, "labels") if "labels" in record else list(input_ids)
    if len(labels) != len(input_ids):
        raise DataError(f"{origin}: 'labels' has {len(labels)} entries, {key!r} has {len(input_ids)}")
    if "attention_mask" in record:
        mask = _id_list(record["attention_mask"], origin, "attention_mask")
        if len(mask) != len(input_ids) or set(mask) - {0, 1}:
            raise DataError(f"{origin}: 'attention_mask' must be 0/1 for each of the {len(input_ids)} tokens")
        input_ids = [t for t, keep in zip(input_ids, mask) if keep]
        labels = [t for t, keep in zip(labels, mask) if keep]
    return input_ids, labels


def _id_list(value: Any, origin: str, key: str) -> list[int]:
    """A list of ints from a list, a tuple, a tensor or an array ([n], or [1, n] as a tokenizer's
    `return_tensors` gives)."""
    values = value.tolist() if hasattr(value, "tolist") else list(value)
    if len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"{origin}: {key!r} must hold integer token ids")
    return values


def record_format(record: dict) -> Optional[str]:
    if "tokens" in record or "input_ids" in record:
        return "tokens"
    if "messages" in record:
        return "chat"
    if "output" in record and ("input" in record or "instruction" in record):
        return "input_output"
    if "text" in record:
        return "text"
    return None


def generation_records(dataset: _RecordDataset, limit: int) -> list[dict]:
    """Prompt/target pairs from the first `limit` input/output records (for a generation eval)."""
    pairs = [{"text": prompt_text(r), "target": r["output"]} for r in dataset.records
             if record_format(r) == "input_output"]
    return pairs[:limit]
