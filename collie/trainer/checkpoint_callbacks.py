"""Callbacks that save, select and restore models: periodic checkpoints, top-k on a metric,
load-best-at-end and early stopping. Their state is checkpointed, so resume continues them.
(`collie.callbacks` gives them CoLLiE's signatures.)"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Optional, Union

from collie import storage
from collie.events import Callback
from collie.trainer import checkpoint

log = logging.getLogger("collie")


def save_into(trainer, path: str, hf_model: bool = False, model_only: bool = False) -> str:
    """The model in Hugging Face format (`Trainer.save_model`), or a DCP checkpoint that
    `Trainer.load_checkpoint` reads; returns where it went."""
    if hf_model:
        trainer.save_model(path)
        return path
    return trainer.save_checkpoint(path, model_only=model_only)


class CheckpointCallback(Callback):
    """Training checkpoints (DCP) every n steps and/or epochs, and at the end of training.

    `model_only=True` writes only the model weights (no optimizer, RNG or data position):
    smaller, and still loadable with `resume_from`, which then starts a fresh optimizer.

    Without `folder` they go to `output_dir/checkpoints/step-N`. With `folder` they are named as
    CoLLiE names them: `epoch_{e}-batch_{b}` (every n steps, or every n batches of an epoch,
    `b` counted in the epoch), `epoch_{e+1}` (every n epochs), `last` (rewritten at each epoch
    end and at the end of training); `max_to_keep` counts the first two kinds. `hf_model=True`
    writes the model in Hugging Face format (`Trainer.save_model`) instead of a checkpoint.
    """

    def __init__(self, every_n_steps: int = 0, every_n_epochs: int = 0, last: bool = True,
                 max_to_keep: int = 0, model_only: bool = False, folder: Optional[str] = None,
                 every_n_batches: int = 0, hf_model: bool = False) -> None:
        if hf_model and folder is None:
            raise ValueError("hf_model: set folder, where the Hugging Face models are written")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.every_n_batches = every_n_batches
        self.last = last
        self.max_to_keep = max_to_keep
        self.model_only = model_only
        self.folder = folder
        self.hf_model = hf_model
        self.kept: list[str] = []  # names of the periodic saves under `folder`, oldest first
        self._saved_at: dict[str, int] = {}  # name -> the step it was last written at

    def on_train_batch_end(self, trainer, loss: float) -> None:
        step_due = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        batch_due = self.every_n_batches and trainer.batch_in_epoch % self.every_n_batches == 0
        if step_due or batch_due:
            self._save(trainer, f"epoch_{trainer.epoch}-batch_{trainer.batch_in_epoch}", periodic=True)

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, f"epoch_{epoch + 1}", periodic=True)
        if self.last and self.folder is not None:
            self._save(trainer, "last")

    def on_train_end(self, trainer) -> None:
        if self.last:
            self._save(trainer, "last")

    def _save(self, trainer, name: str, periodic: bool = False) -> None:
        if self.folder is None:
            name = f"step-{trainer.global_step}"  # one checkpoint a step, whatever asked for it
        if self._saved_at.get(name) == trainer.global_step:
            return
        try:
            if self.folder is None:
                trainer.save_checkpoint(max_to_keep=self.max_to_keep, model_only=self.model_only)
            else:
                save_into(trainer, os.path.join(self.folder, name), self.hf_model, self.model_only)
        except checkpoint.CheckpointWriteError as e:
            if getattr(trainer.config, "checkpoint_errors", "stop") != "warn":
                raise
            log.warning("step %d: %s; training goes on and the next checkpoint tries again "
                        "(checkpoint_errors=warn)", trainer.global_step, e)
            return
        self._saved_at[name] = trainer.global_step
        if self.folder is not None and periodic:
            self._rotate(trainer, name)

    def _rotate(self, trainer, name: str) -> None:
        if name in self.kept:
            self.kept.remove(name)
        self.kept.append(name)
        while self.max_to_keep and len(self.kept) > self.max_to_keep:
            dropped = self.kept.pop(0)
            if trainer.runtime.is_main:
                storage.remove_tree(os.path.join(self.folder, dropped))

    def state_dict(self) -> dict:
        return {"kept": list(self.kept)}

    def load_state_dict(self, state: dict) -> None:
        self.kept = list(state.get("kept", []))


class MetricWatcher(Callback):
    """Reads one metric from every evaluation; `mode` says whether lower or higher is better.

    `monitor` is a result's name or a function of the results that returns the value (None:
    this evaluation has none, and the watcher skips it). CoLLiE names a result `metric#key`;
    such a name is found under `key`, collie's name for it, when the results have no `metric#key`.
    """

    def __init__(self, monitor: Union[str, Callable[[dict], Optional[float]]], mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode: {mode!r} is not one of min, max")
        self.monitor = monitor
        self.mode = mode

    @property
    def larger_better(self) -> bool:
        return self.mode == "max"

    @property
    def monitor_name(self) -> str:
        return getattr(self.monitor, "__qualname__", None) or str(self.monitor)

    def value(self, results: dict) -> Optional[float]:
        if callable(self.monitor):
            value = self.monitor(results)
            return None if value is None else float(value)
        for name in (self.monitor, self.monitor.rpartition("#")[2]):
            if name in results:
                return float(results[name])
        numeric = sorted(k for k, v in results.items() if isinstance(v, (int, float)))
        raise KeyError(f"{type(self).__name__}: metric {self.monitor!r} is not among the evaluation "
                       f"results ({', '.join(numeric) or 'none'})")

    def better(self, value: Optional[float], than: Optional[float], min_delta: float = 0.0) -> bool:
        if value is None or math.isnan(value):
            return False
        if than is None:
            return True
        return value < than - min_delta if self.mode == "min" else value > than + min_delta


class TopKCheckpointCallback(MetricWatcher):
    """Keeps the k best models by a metric (`top_k=-1`: every one that is evaluated).

    Hugging Face models under `output_dir/best/step-N`, or with `folder` under
    `folder/epoch_{e}-batch_{b}-{monitor}_{value}` (CoLLiE's names); `hf_model=False` writes
    training checkpoints (`Trainer.load_checkpoint` reads them) instead.
    """

    def __init__(self, monitor: Union[str, Callable[[dict], Optional[float]]], mode: str = "min", top_k: int = 1,
                 folder: Optional[str] = None, hf_model: bool = True) -> None:
        super().__init__(monitor, mode)
        if top_k < 1 and top_k != -1:
            raise ValueError(f"top_k: must be >= 1 (or -1 to keep all), got {top_k}")
        self.top_k = top_k
        self.folder = folder
        self.hf_model = hf_model
        self.kept: list[tuple[float, int, str]] = []  # (value, step, path), best first

    def on_evaluate_end(self, trainer, results: dict) -> None:
        self.keep_if_top(trainer, results)

    def keep_if_top(self, trainer, results: dict) -> Optional[str]:
        """Save the model if this evaluation is among the k best; returns where, or None."""
        value = self.value(results)
        worst = self.kept[-1][0] if len(self.kept) == self.top_k else None
        if not self.better(value, worst):
            return None
        if self.folder is None:
            path = os.path.join(trainer.config.output_dir, "best", f"step-{trainer.global_step}")
        else:
            name = f"epoch_{trainer.epoch}-batch_{trainer.batch_in_epoch}-{self.monitor_name}_{value}"
            path = os.path.join(self.folder, name)
        path = save_into(trainer, path, self.hf_model)
        self.kept.append((value, trainer.global_step, path))
        self.kept.sort(key=lambda item: item[0], reverse=self.mode == "max")
        if self.top_k > 0:
            for _, _, dropped in self.kept[self.top_k:]:
                if trainer.runtime.is_main:
                    storage.remove_tree(dropped)
            self.kept = self.kept[:self.top_k]
        return path

    def state_dict(self) -> dict:
        return {"kept": [list(item) for item in self.kept]}

    def load_state_dict(self, state: dict) -> None:
        self.kept = [tuple(item) for item in state.get("kept", [])]


class LoadBestModelCallback(MetricWatcher):
    """Remembers the weights of the best evaluation (a model-only DCP checkpoint, sharded like
    the model, in `folder/best` or `output_dir/best_model_state`) and loads them back into the
    model when training ends; `delete_after_train` then removes them."""

    def __init__(self, monitor: Union[str, Callable[[dict], Optional[float]]], mode: str = "min",
                 folder: Optional[str] = None, delete_after_train: bool = False) -> None:
        super().__init__(monitor, mode)
        self.folder = folder
        self.delete_after_train = delete_after_train
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.best_path: Optional[str] = None

    def _path(self, trainer) -> str:
        if self.folder is not None:
            return os.path.join(self.folder, "best")
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
        if self.best_step is None:
            return
        saved = trainer.checkpointed
        path = self.best_path or self._path(trainer)
        checkpoint.load_model_only(saved.model, path, adapters_only=saved.adapters_only)
        log.info("loaded the best model (%s=%.6g at step %d)", self.monitor_name, self.best, self.best_step)
        if self.delete_after_train:
            trainer.runtime.barrier()  # every rank has read it
            if trainer.runtime.is_main:
                storage.remove_tree(path)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "best_path": self.best_path}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.best_path = state.get("best_path")


class EarlyStoppingCallback(MetricWatcher):
    """Stops training after `patience` evaluations without an improvement of `min_delta`
    (an evaluation without the metric, from a monitor function that returns None, is not counted)."""

    def __init__(self, monitor: Union[str, Callable[[dict], Optional[float]]], mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0) -> None:
        super().__init__(monitor, mode)
        self.patience = patience
        self.min_delta = min_delta
        self.best: Optional[float] = None
        self.bad_evaluations = 0

    def on_evaluate_end(self, trainer, results: dict) -> None:
        value = self.value(results)
        if value is None:
            return
        if self.better(value, self.best, self.min_delta):
            self.best, self.bad_evaluations = value, 0
            return
        self.bad_evaluations += 1
        if self.bad_evaluations >= self.patience:
            log.info("early stopping at step %d: %s has not improved for %d evaluations",
                     trainer.global_step, self.monitor_name, self.bad_evaluations)
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evaluations = state.get("best"), state.get("bad_evaluations", 0)
