"""The logger collie writes to (the parent of every `collie.*` module's logger)."""

import logging

__all__ = ["logger"]

logger = logging.getLogger("collie")
