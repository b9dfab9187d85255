"""CoLLiE's `collie.callbacks.callback`: the base class of callbacks (collie's `collie.events.Callback`)."""

from collie.events import Callback

__all__ = ["Callback"]
