"""CoLLiE's `TopkSaver`: keeps the k best models by an evaluation result, and saves into a
folder on request (collie's `TopKCheckpointCallback`, with CoLLiE's signature and methods)."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch.distributed as dist

from collie import storage
from collie.callbacks._save_options import check_peft_only, check_save_options
from collie.trainer.checkpoint_callbacks import TopKCheckpointCallback, save_into

__all__ = ["TopkSaver"]


class TopkSaver(TopKCheckpointCallback):
    """`topk`: how many to keep (-1: all, 0: none, a plain saver); `folder` (the working
    directory by default) receives `epoch_{e}-batch_{b}-{monitor}_{value}`; `model_only=True`
    saves the model in Hugging Face format, `False` a training checkpoint."""

    def __init__(self, topk: Optional[int] = 0, monitor: Union[str, Callable[[dict], Optional[float]], None] = None,
                 larger_better: bool = True, folder: Optional[str] = None, process_exclusion: bool = False,
                 model_only: bool = True, peft_only: bool = True, **kwargs) -> None:
        topk = topk or 0
        if monitor is not None and topk == 0:
            raise ValueError("TopkSaver: monitor is set but topk is 0; set topk (how many models to keep)")
        if topk != 0 and monitor is None:
            raise ValueError("TopkSaver: topk is set but monitor is None; set monitor (the result to rank by)")
        check_save_options(type(self).__name__, process_exclusion, kwargs)
        folder = str(folder) if folder is not None else os.path.abspath(os.getcwd())
        # topk 0 saves nothing by itself (`save_topk` answers None); -1 stands in for the parent's check.
        super().__init__(monitor, "max" if larger_better else "min", top_k=topk or -1, folder=folder,
                         hf_model=model_only)
        self.topk = topk
        self.save_folder = folder
        self.model_only = model_only
        self.peft_only = peft_only

    def on_train_begin(self, trainer) -> None:
        check_peft_only(type(self).__name__, self.peft_only, trainer)

    def on_evaluate_end(self, trainer, results: dict) -> None:
        self.save_topk(trainer, results)

    def save_topk(self, trainer, results: dict) -> Optional[str]:
        """Save if `results` are among the k best; returns the folder written, or None."""
        if self.topk == 0:
            return None
        return self.keep_if_top(trainer, results)

    def save(self, trainer, folder_name: str) -> str:
        """Save into `folder/folder_name`; returns that path."""
        return save_into(trainer, os.path.join(self.save_folder, folder_name), self.hf_model)

    def rm(self, folder_name: str) -> None:
        """Remove `folder/folder_name` (rank 0 of a distributed run)."""
        if not dist.is_initialized() or dist.get_rank() == 0:
            storage.remove_tree(os.path.join(self.save_folder, folder_name))
