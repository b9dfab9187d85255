"""Whether the forward being run is one that activation checkpointing runs again in backward.

`collie.distributed.parallelize.apply_activation_checkpointing` runs each checkpointed block's
forward, and its recomputation in backward, inside a `CheckpointedRun`. A layer that knows it is
there can keep less: what its first run saves for backward is dropped anyway, and of its second
run only what it saves is used, not its output (`collie.models.swiglu` then keeps its input and
makes the rest in backward, a block at a time).
"""

from __future__ import annotations

import contextvars

# None: not under activation checkpointing; False: the first run; True: the run again in backward.
_run: contextvars.ContextVar = contextvars.ContextVar("collie_checkpointed_run", default=None)


class CheckpointedRun:
    """The forward inside runs under activation checkpointing: its first run (`again` False) or
    its recomputation in backward. Reusable: a retained graph recomputes once per backward."""

    def __init__(self, again: bool) -> None:
        self.again = again
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> None:
        self._tokens.append(_run.set(self.again))

    def __exit__(self, *exc) -> None:
        _run.reset(self._tokens.pop())


def recomputed_in_backward() -> bool:
    """Whether the forward being run is checkpointed (first run or recomputation)."""
    return _run.get() is not None


def recomputing() -> bool:
    """Whether the forward being run is the recomputation in backward."""
    return _run.get() is True
