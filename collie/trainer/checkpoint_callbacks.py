"""Callbacks that save, select and restore models: periodic checkpoints, top-k on a metric,
load-best-at-end and early stopping. Their state is checkpointed, so resume continues them."""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

from collie import storage
from collie.events import Callback
from collie.trainer import checkpoint

log = logging.getLogger("collie")


class CheckpointCallback(Callback):
    """Training checkpoints (DCP) every n steps and/or epochs, and at the end of training.

    `model_only=True` writes only the model weights (no optimizer, RNG or data position):
    smaller, and still loadable with `resume_from`, which then starts a fresh optimizer.
    """

    def __init__(self, every_n_steps: int = 0, every_n_epochs: int = 0, last: bool = True,
                 max_to_keep: int = 0, model_only: bool = False) -> None:
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.last = last
        self.max_to_keep = max_to_keep
        self.model_only = model_only
        self._saved_step: Optional[int] = None

    def on_train_batch_end(self, trainer, loss: float) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer)

    def on_train_end(self, trainer) -> None:
        if self.last:
            self._save(trainer)

    def _save(self, trainer) -> None:
        if self._saved_step == trainer.global_step:
            return
        try:
            trainer.save_checkpoint(max_to_keep=self.max_to_keep, model_only=self.model_only)
        except checkpoint.CheckpointWriteError as e:
            if getattr(trainer.config, "checkpoint_errors", "stop") != "warn":
                raise
            log.warning("step %d: %s; training goes on and the next checkpoint tries again "
                        "(checkpoint_errors=warn)", trainer.global_step, e)
            return
        self._saved_step = trainer.global_step


class _MetricWatcher(Callback):
    """Reads one metric from every evaluation; `mode` says whether lower or higher is better."""

    def __init__(self, monitor: str, mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode: {mode!r} is not one of min, max")
        self.monitor = monitor
        self.mode = mode

    def value(self, results: dict) -> float:
        if self.monitor not in results:
            numeric = sorted(k for k, v in results.items() if isinstance(v, (int, float)))
            raise KeyError(f"{type(self).__name__}: metric {self.monitor!r} is not among the evaluation "
                           f"results ({', '.join(numeric) or 'none'})")
        return float(results[self.monitor])

    def better(self, value: float, than: Optional[float], min_delta: float = 0.0) -> bool:
        if math.isnan(value):
            return False
        if than is None:
            return True
        return value < than - min_delta if self.mode == "min" else value > than + min_delta


class TopKCheckpointCallback(_MetricWatcher):
    """Keeps the k best models (HF format, under `output_dir/best/step-N`) by a metric."""

    def __init__(self, monitor: str, mode: str = "min", top_k: int = 1) -> None:
        super().__init__(monitor, mode)
        if top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {top_k}")
        self.top_k = top_k
        self.kept: list[tuple[float, int, str]] = []  # (value, step, path), best first

    def on_evaluate_end(self, trainer, results: dict) -> None:
        value = self.value(results)
        worst = self.kept[-1][0] if len(self.kept) == self.top_k else None
        if not self.better(value, worst):
            return
        path = os.path.join(trainer.config.output_dir, "best", f"step-{trainer.global_step}")
        trainer.save_model(path)
        self.kept.append((value, trainer.global_step, path))
        self.kept.sort(key=lambda item: item[0], reverse=self.mode == "max")
        for _, _, dropped in self.kept[self.top_k:]:
            if trainer.runtime.is_main:
                storage.remove_tree(dropped)
        self.kept = self.kept[:self.top_k]

    def state_dict(self) -> dict:
        return {"kept": [list(item) for item in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.kept = [tuple(item) for item in state.get("kept", [])]


class LoadBestModelCallback(_MetricWatcher):
    """Remembers the weights of the best evaluation (a model-only DCP checkpoint, sharded like
    the model) and loads them back into the model when training ends."""

    def __init__(self, monitor: str, mode: str = "min") -> None:
        super().__init__(monitor, mode)
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_path: Optional[str] = None

    def _path(self, trainer) -> str:
        return os.path.join(trainer.config.output_dir, "best_model_state")

    def on_evaluate_end(self, trainer, results: dict) -> None:
        value = self.value(results)
        if self.better(value, self.best):
            self.best, self.best_step = value, trainer.global_step
            previous = self.best_path
            # In an object store the new state gets a fresh name: the previous one stays until it is written.
            self.best_path = checkpoint.save(trainer.checkpointed, self._path(trainer), model_only=True,
                                             mark_latest=False)
            if previous not in (None, self.best_path) and trainer.runtime.is_main:
                storage.remove_tree(previous)

    def on_train_end(self, trainer) -> None:
        if self.best_step is not None:
            saved = trainer.checkpointed
            checkpoint.load_model_only(saved.model, self.best_path or self._path(trainer),
                                       adapters_only=saved.adapters_only)
            log.info("loaded the best model (%s=%.6g at step %d)", self.monitor, self.best, self.best_step)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "best_path": self.best_path}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.best_path = state.get("best_path")


class EarlyStoppingCallback(_MetricWatcher):
    """Stops training after `patience` evaluations without an improvement of `min_delta`."""

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3, min_delta: float = 0.0) -> None:
        super().__init__(monitor, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.best: Optional[float] = None
        self.bad_evaluations = 0

    def on_evaluate_end(self, trainer, results: dict) -> None:
        value = self.value(results)
        if self.better(value, self.best, self.min_delta):
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            log.info("early stopping at step %d: %s has not improved for %d evaluations",
                     trainer.global_step, self.monitor, self.bad_evaluations)
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evaluations = state.get("best"), state.get("bad_evaluations", 0)
