"""Callbacks: user code that runs at the Trainer's events.

Every method receives the trainer; override the ones you need. A method may take fewer
arguments than the event passes (CoLLiE's `on_train_epoch_end(self, trainer)`): it receives
the leading ones it accepts. A callback with state to keep across resume implements
`state_dict` / `load_state_dict` (JSON data), or CoLLiE's way: `on_save_checkpoint(self,
trainer)` returns the state and `on_load_checkpoint(self, trainer, states)` receives it back.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

# The events through which a CoLLiE-style callback saves and restores its state.
_STATE_EVENTS = ("on_save_checkpoint", "on_load_checkpoint")


class Callback:
    def on_setup_parallel_model(self, trainer) -> None:
        """Before the layout is applied: the trainer has its config and model, no parallel model yet."""

    def on_after_trainer_initialized(self, trainer) -> None: ...
    def on_train_begin(self, trainer) -> None: ...
    def on_train_end(self, trainer) -> None: ...
    def on_train_epoch_begin(self, trainer, epoch: int) -> None: ...
    def on_train_epoch_end(self, trainer, epoch: int) -> None: ...
    def on_train_batch_begin(self, trainer, batch: list[dict]) -> None: ...
    def on_train_batch_end(self, trainer, loss: float) -> None: ...
    def on_evaluate_begin(self, trainer) -> None: ...
    def on_evaluate_end(self, trainer, results: dict) -> None: ...
    def on_save_model(self, trainer, path: str) -> None: ...
    def on_load_model(self, trainer) -> None: ...
    def on_save_checkpoint(self, trainer, path: str) -> None: ...
    def on_load_checkpoint(self, trainer, path: str) -> None: ...

    @property
    def callback_name(self) -> str:
        """CoLLiE's name of a callback (its class name)."""
        return type(self).__name__

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def keeps_state_collie_way(callback: Callback) -> bool:
    """Whether `callback` returns its state from `on_save_checkpoint(trainer)` (CoLLiE's
    signature) rather than from `state_dict()`."""
    return _positional_count(callback.on_save_checkpoint) == 1


def _positional_count(method) -> Optional[int]:
    """How many positional arguments a bound method accepts (None: any number)."""
    parameters = inspect.signature(method).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               for p in parameters)


class CallbackList:
    """Fans each event out to every callback, in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def fire(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            if event in _STATE_EVENTS and keeps_state_collie_way(callback):
                continue  # called with its state by `state_dicts` / `load_state_dicts` instead
            method = getattr(callback, event)
            accepted = _positional_count(method)
            method(*(args if accepted is None else args[:accepted]))

    def state_dicts(self, trainer) -> list:
        """Every callback's state, in order, for the trainer's checkpoint."""
        return [callback.on_save_checkpoint(trainer) if keeps_state_collie_way(callback) else callback.state_dict()
                for callback in self.callbacks]

    def load_state_dicts(self, trainer, states: list) -> None:
        for callback, state in zip(self.callbacks, states):
            if keeps_state_collie_way(callback):
                callback.on_load_checkpoint(trainer, state)
            else:
                callback.load_state_dict(state)
