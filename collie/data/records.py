"""Reading records from lists, JSON/JSONL files and `datasets.Dataset`s, keeping where each
came from so that a bad record is reported by file and line (or index), not by a KeyError."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Union

RecordSource = Union[str, Iterable[dict], Any]


class DataError(ValueError):
    """A data file or record is malformed; the message names the file/line or index."""


def load_records(source: RecordSource) -> tuple[list[dict], list[str]]:
    """(records, where each record came from)."""
    if isinstance(source, (str, os.PathLike)):
        records, origins = _read_file(os.fspath(source))
    else:
        records = list(source)
        origins = [f"record {i}" for i in range(len(records))]
    if not records:
        raise DataError(f"{_describe(source)}: the dataset is empty")
    for record, origin in zip(records, origins):
        if not isinstance(record, dict):
            raise DataError(f"{origin}: expected a JSON object, got {type(record).__name__}")
    return records, origins


def read_text_file(path: str, what: str = "data file") -> str:
    """A UTF-8 text file's contents (newlines as Python's text mode reads them); a missing file, a
    directory or bytes that are not UTF-8 are one line naming the file."""
    if os.path.isdir(path):
        raise DataError(f"{path}: a directory, not a {what}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: the {what} is not UTF-8 text ({e.reason} at byte {e.start}); "
                        "save it as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_file(path: str) -> tuple[list[dict], list[str]]:
    text = read_text_file(path)
    if path.endswith(".jsonl"):
        records, origins = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: malformed JSON ({e.msg})") from None
            origins.append(f"{path}:{number}")
        return records, origins
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (or use .jsonl, one record per line)")
    return data, [f"{path} record {i}" for i in range(len(data))]


def _describe(source: RecordSource) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
