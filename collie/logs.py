"""collie's log lines where a script that set up no logging can see them: CoLLiE's scripts never
configure `logging`, yet collie says there what it changed (a derived dp_size, a DeepSpeed setting
it translated, remote code it will not run). The CLI and applications that configure logging
themselves are left alone."""

from __future__ import annotations

import logging
import sys

from collie.launch_env import read_launch_env


class _CurrentStderr(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a line is logged (a redirect or a capture made later
    is followed; a stream closed since is never written to)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_collie_logs() -> None:
    """INFO lines of the `collie` logger on stderr, from the main process only, unless logging
    is already configured (the root logger or collie's has a handler)."""
    logger = logging.getLogger("collie")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    if int(read_launch_env().get("RANK", "0")) != 0:
        handler.setLevel(logging.WARNING)  # the other ranks say only what went wrong
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # A library that configures the root logger later (some do on import) must not print them twice.
    logger.propagate = False
