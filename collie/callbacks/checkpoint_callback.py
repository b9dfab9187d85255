"""CoLLiE's `CheckpointCallback(folder, every_n_epochs, every_n_batches, ...)`: collie's
`CheckpointCallback` under CoLLiE's signature, plus its top-k saving (`TopkSaver`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from collie.callbacks._save_options import check_peft_only
from collie.callbacks.topk_saver import TopkSaver
from collie.trainer import checkpoint_callbacks

__all__ = ["CheckpointCallback"]


def _count(name: str, value: Optional[int]) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: must be an int >= 0, got {value!r}")
    return value


class CheckpointCallback(checkpoint_callbacks.CheckpointCallback):
    """Saves into `folder` (the working directory by default): `epoch_{e}-batch_{b}` every
    `every_n_batches` batches of an epoch, `epoch_{e+1}` every `every_n_epochs` epochs, `last`
    at each epoch end when `last`, the `topk` best by `monitor` after evaluations
    (`epoch_{e}-batch_{b}-{monitor}_{value}`); `max` keeps that many of the periodic ones.
    `model_only=True` (CoLLiE's default) saves the model in Hugging Face format, `False` a
    training checkpoint that `Trainer.load_checkpoint` resumes from. collie's own names are
    accepted too: `every_n_steps` (counted over the run) and `max_to_keep` (= `max`).
    """

    def __init__(self, folder: Optional[Union[str, Path]] = None, every_n_epochs: Optional[int] = None,
                 every_n_batches: Optional[int] = None, process_exclusion: bool = False, model_only: bool = True,
                 peft_only: bool = True, monitor: Union[str, Callable[[dict], Optional[float]], None] = None,
                 larger_better: bool = True, topk: int = 0, last: bool = False, max: Optional[int] = None,
                 every_n_steps: int = 0, max_to_keep: Optional[int] = None, **kwargs) -> None:
        if max is not None and max_to_keep is not None:
            raise ValueError("CheckpointCallback: max and max_to_keep are the same setting; pass one")
        # The saver checks CoLLiE's saving options and settles the folder.
        self.topk_saver = TopkSaver(topk, monitor, larger_better, folder, process_exclusion, model_only, peft_only,
                                    **kwargs)
        super().__init__(every_n_steps=_count("every_n_steps", every_n_steps),
                         every_n_epochs=_count("every_n_epochs", every_n_epochs), last=last,
                         max_to_keep=_count("max", max if max_to_keep is None else max_to_keep),
                         folder=self.topk_saver.save_folder, every_n_batches=_count("every_n_batches", every_n_batches),
                         hf_model=model_only)
        self.topk = topk
        self.peft_only = peft_only

    def on_train_begin(self, trainer) -> None:
        check_peft_only(type(self).__name__, self.peft_only, trainer)

    def on_evaluate_end(self, trainer, results: dict) -> None:
        self.topk_saver.save_topk(trainer, results)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "topk_saver": self.topk_saver.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.topk_saver.load_state_dict(state.get("topk_saver", {}))
