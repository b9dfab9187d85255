"""CoLLiE's `PetrelIODriver` (SenseTime's Ceph client): refused, object stores go through fsspec."""

from __future__ import annotations

from typing import NoReturn

from collie.driver.io.base import IODriver


def _unsupported(*args, **kwargs) -> NoReturn:
    raise NotImplementedError("PetrelIODriver: Petrel (Ceph) is not supported; use s3:// paths through fsspec "
                              "(FileIODriver, or any collie path)")


class PetrelIODriver(IODriver):
    protocol = "petrel"
    load = load_buffer = save = save_buffer = exists = list = walk = delete = makedirs = staticmethod(_unsupported)
