"""CoLLiE's `collie.utils.padder`: the padder lives in `collie.data.collate`."""

from collie.data.collate import ColliePadder

__all__ = ["ColliePadder"]
