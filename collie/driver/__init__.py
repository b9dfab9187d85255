"""CoLLiE's `collie.driver`: file access by protocol (`collie.driver.io`)."""

from collie.driver.io import FileIODriver, IODriver, PetrelIODriver

__all__ = ["FileIODriver", "IODriver", "PetrelIODriver"]
