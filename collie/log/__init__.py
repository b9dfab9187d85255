"""CoLLiE's `collie.log`: the logger collie writes to, and a print that goes through it."""

from collie.log.logger import logger
from collie.log.print import print

__all__ = ["logger", "print"]
