"""CoLLiE names collie does not carry over: importing them works, using them raises one line
saying why and what to use instead."""

from __future__ import annotations


def refused_class(name: str, reason: str) -> type:
    """A class named `name` whose construction raises NotImplementedError(`name: reason`)."""
    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"{name}: {reason}")
    return type(name, (), {"__init__": __init__, "__doc__": f"Refused in collie: {reason}"})
