"""CoLLiE's `print`: a line logged at INFO by collie's logger, with the rank it came from."""

from __future__ import annotations

import builtins
import logging
from typing import IO, Any, Optional

import torch.distributed as dist

from collie.log.logger import logger

__all__ = ["print"]


def print(*args: Any, sep: str = " ", end: str = "\n", file: Optional[IO] = None, flush: bool = False) -> None:
    """`sep` joins `args` into one line, prefixed by the rank under torch.distributed; `end`,
    `file` and `flush` are accepted as CoLLiE did and have no effect on a log line. Where
    nothing shows collie's INFO lines (no handler, or a higher level) the line is printed, so
    it is never lost."""
    line = sep.join(map(str, args))
    if dist.is_available() and dist.is_initialized():
        line = f"[rank {dist.get_rank()}] {line}"
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(line)
    else:
        builtins.print(line, flush=True)
