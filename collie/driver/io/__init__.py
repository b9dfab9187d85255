"""CoLLiE's IO drivers: local files and fsspec URLs (`FileIODriver`); Petrel is refused."""

from collie.driver.io.base import IODriver
from collie.driver.io.file import FileIODriver
from collie.driver.io.petrel import PetrelIODriver

__all__ = ["FileIODriver", "IODriver", "PetrelIODriver"]
