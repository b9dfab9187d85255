"""The interface of CoLLiE's IO drivers: static methods on a class, one class per protocol."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any, Optional


class IODriver(ABC):
    # CoLLiE's name for the driver (`from_protocol`).
    protocol: str = ""

    @staticmethod
    @abstractmethod
    def load(path: str, mode: str) -> Any:
        """Text (`mode` without "b") or a `torch.save`d object ("rb")."""

    @staticmethod
    @abstractmethod
    def load_buffer(path: str) -> io.BytesIO:
        """The file's bytes in a buffer at position 0."""

    @staticmethod
    @abstractmethod
    def save(obj: Any, path: str, append: bool = False) -> None:
        """A string as text (appended with `append`), anything else with `torch.save`."""

    @staticmethod
    @abstractmethod
    def save_buffer(obj: io.BytesIO, path: str) -> None:
        """A buffer's bytes."""

    @staticmethod
    @abstractmethod
    def exists(path: str) -> bool: ...

    @staticmethod
    @abstractmethod
    def list(path: str) -> list[str]:
        """Names directly under `path`."""

    @staticmethod
    @abstractmethod
    def walk(path: str, suffix: Optional[str] = None) -> list[str]:
        """Paths of the files under `path` whose names end with `suffix`."""

    @staticmethod
    @abstractmethod
    def delete(path: str) -> None:
        """A file, or a directory and everything under it."""

    @staticmethod
    @abstractmethod
    def makedirs(path: str, exist_ok: bool = False) -> None: ...

    @staticmethod
    def from_protocol(protocol: str) -> type["IODriver"]:
        """The driver of CoLLiE's `protocol` ("file" or "petrel")."""
        drivers = {cls.protocol: cls for cls in IODriver.__subclasses__()}
        if protocol not in drivers:
            raise ValueError(f"protocol: {protocol!r} is not one of {', '.join(sorted(drivers))}")
        return drivers[protocol]
