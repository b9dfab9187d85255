"""Classification records: a prompt and the options to choose from.

`{"input", "output"}` with the options given to the dataset (`output` must be one of them), or
`{"input", "options": [...], "target": index}` with options per record. Each option is
tokenized as a continuation of the prompt; the prompt is cut from the left when the longest
option would not fit in `max_length`.
"""

from __future__ import annotations

from typing import Any, Optional

from collie.data.datasets import _RecordDataset
from collie.data.records import DataError, RecordSource


class CollieDatasetForClassification(_RecordDataset):
    """Items are `{"input_ids", "options": [ids per option], "target": index, "text"}`."""

    def __init__(self, dataset: RecordSource, tokenizer: Any, max_length: Optional[int] = None,
                 options: Optional[list[str]] = None) -> None:
        self.options = list(options) if options is not None else None
        super().__init__(dataset, tokenizer, max_length)

    def _check(self, record: dict, origin: str) -> None:
        if self.tokenizer is None:
            raise DataError(f"{origin}: a tokenizer is needed for classification records")
        if "input" not in record:
            raise DataError(f"{origin}: record has keys {sorted(record)}; expected 'input' with 'output' (one of "
                            "the dataset's options) or 'options' + 'target'")
        if "options" in record:
            options, target = record["options"], record.get("target")
            if not isinstance(options, list) or len(options) < 2:
                raise DataError(f"{origin}: 'options' must be a list of at least 2 strings")
            if not isinstance(target, int) or not 0 <= target < len(options):
                raise DataError(f"{origin}: 'target' must be the index of the right option (0..{len(options) - 1}), "
                                f"got {target!r}")
        elif self.options is None:
            raise DataError(f"{origin}: no 'options' in the record and none given to the dataset (options=[...])")
        elif record.get("output") not in self.options:
            raise DataError(f"{origin}: 'output' {record.get('output')!r} is not one of the options {self.options}")

    def _item(self, record: dict, origin: str) -> dict:
        options = record.get("options", self.options)
        target = record["target"] if "options" in record else self.options.index(record["output"])
        prompt = self._encode(record["input"], origin, "input", True)
        encoded = [self._encode(option, origin, "options", False) for option in options]
        if any(not option for option in encoded):
            raise DataError(f"{origin}: an option has no tokens")
        if self.max_length is not None:
            room = self.max_length - max(len(option) for option in encoded)
            if room < 1:
                raise DataError(f"{origin}: an option is longer than max_length ({self.max_length})")
            prompt = prompt[-room:]
        return {"input_ids": prompt, "options": encoded, "target": target, "text": record["input"]}
