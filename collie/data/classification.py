"""Classification records: a prompt and the options to choose from.

`{"input", "output"}` with the options given to the dataset (`output` must be one of them), or
`{"input", "options": [...], "target": index}` with options per record, or CoLLiE's form of it,
`{"input", "output": [...options], "target": index}`. Each option is
tokenized as a continuation of the prompt; the prompt is cut from the left when the longest
option would not fit in `max_length`.
"""

from __future__ import annotations

from typing import Any, Optional

from collie.data.datasets import _RecordDataset
from collie.data.records import DataError, RecordSource


class CollieDatasetForClassification(_RecordDataset):
    """Items are `{"input_ids", "options": [ids per option], "target": index, "text"}`."""

    def __init__(self, dataset: RecordSource, tokenizer: Any = None, add_special_tokens: bool = True,
                 shuffle: bool = False, seed: int = 1024, max_length: Optional[int] = None, style: str = "harness",
                 options: Optional[list[str]] = None) -> None:
        """CoLLiE's arguments (`style="harness"`: each option scored by its likelihood as the
        prompt's continuation), and `options` shared by records that name their answer."""
        if style.lower() != "harness":
            raise ValueError(f"style: {style!r} is not supported; collie scores each option by its likelihood "
                             "(style='harness')")
        self.options = list(options) if options is not None else None
        super().__init__(dataset, tokenizer, add_special_tokens, shuffle, seed, max_length)

    def _check(self, record: dict, origin: str) -> None:
        if self.tokenizer is None:
            raise DataError(f"{origin}: a tokenizer is needed for classification records")
        if "input" not in record:
            raise DataError(f"{origin}: record has keys {sorted(record)}; expected 'input' with 'output' (one of "
                            "the dataset's options) or 'options' + 'target'")
        if "options" in record or isinstance(record.get("output"), list):
            options, target = record_options(record), record.get("target")
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
        options = record_options(record) or self.options
        target = self.options.index(record["output"]) if options is self.options else record["target"]
        prompt = self._encode(record["input"], origin, "input", self.add_special_tokens)
        encoded = [self._encode(option, origin, "options", False) for option in options]
        if any(not option for option in encoded):
            raise DataError(f"{origin}: an option has no tokens")
        if self.max_length is not None:
            room = self.max_length - max(len(option) for option in encoded)
            if room < 1:
                raise DataError(f"{origin}: an option is longer than max_length ({self.max_length})")
            prompt = prompt[-room:]
        return {"input_ids": prompt, "options": encoded, "target": target, "text": record["input"]}


def record_options(record: dict) -> Optional[list]:
    """A record's own options: `options`, or CoLLiE's list in `output` (None: the dataset's)."""
    if "options" in record:
        return record["options"]
    return record["output"] if isinstance(record.get("output"), list) else None
