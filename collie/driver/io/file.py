"""CoLLiE's `FileIODriver`, on `collie.storage`: local paths and any fsspec URL (`s3://…`)."""

from __future__ import annotations

import io
import os
from typing import Any, Optional

import torch

from collie import storage
from collie.driver.io.base import IODriver


class FileIODriver(IODriver):
    protocol = "file"

    @staticmethod
    def load(path: str, mode: str = "r") -> Any:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        if "b" not in mode.lower():
            return storage.read_text(path)
        with storage.open_file(path, "rb") as f:
            return torch.load(f, map_location="cpu")

    @staticmethod
    def load_buffer(path: str) -> io.BytesIO:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        with storage.open_file(path, "rb") as f:
            return io.BytesIO(f.read())

    @staticmethod
    def save(obj: Any, path: str, append: bool = False) -> None:
        storage.makedirs(os.path.dirname(path) or ".")
        if not isinstance(obj, str):
            with storage.open_file(path, "wb") as f:
                torch.save(obj, f)
        elif append:
            with storage.open_file(path, "a") as f:
                f.write(obj)
        else:
            storage.write_text(path, obj)

    @staticmethod
    def save_buffer(obj: io.BytesIO, path: str) -> None:
        storage.makedirs(os.path.dirname(path) or ".")
        with storage.open_file(path, "wb") as f:
            f.write(obj.getvalue())

    @staticmethod
    def exists(path: str) -> bool:
        return storage.exists(path)

    @staticmethod
    def list(path: str) -> list[str]:
        return storage.listdir(path)

    @staticmethod
    def walk(path: str, suffix: Optional[str] = None) -> list[str]:
        if storage.is_url(path):
            fs, inner = storage.filesystem(path)
            protocol = path.split("://", 1)[0]
            found = [f"{protocol}://{name}" for name in fs.find(inner)]
        else:
            found = [os.path.join(root, name) for root, _, names in os.walk(storage.local_form(path)) for name in names]
        return [name for name in found if name.endswith(suffix or "")]

    @staticmethod
    def delete(path: str) -> None:
        if storage.isdir(path):
            storage.remove_tree(path)
        else:
            storage.remove_file(path)

    @staticmethod
    def makedirs(path: str, exist_ok: bool = False) -> None:
        if not exist_ok and storage.exists(path):
            raise FileExistsError(f"{path}: already exists (makedirs with exist_ok=True allows it)")
        storage.makedirs(path)
