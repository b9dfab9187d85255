"""CoLLiE's `LoadBestModelCallback(folder, process_exclusion, monitor, larger_better,
delete_after_train)`: collie's `LoadBestModelCallback` under CoLLiE's signature."""

from __future__ import annotations

from typing import Callable, Optional, Union

from collie.callbacks._save_options import check_save_options
from collie.trainer import checkpoint_callbacks

__all__ = ["LoadBestModelCallback"]


class LoadBestModelCallback(checkpoint_callbacks.LoadBestModelCallback):
    """Keeps the weights of the evaluation with the best `monitor` in `folder/best` and loads
    them back when training ends; `delete_after_train` (CoLLiE's default) then removes them."""

    def __init__(self, folder: str, process_exclusion: bool = False,
                 monitor: Union[str, Callable[[dict], Optional[float]], None] = None, larger_better: bool = True,
                 delete_after_train: bool = True, **kwargs) -> None:
        if monitor is None:
            raise ValueError("LoadBestModelCallback: set monitor (an evaluation result's name, or a function of "
                             "the results that returns the value)")
        check_save_options(type(self).__name__, process_exclusion, kwargs)
        super().__init__(monitor, "max" if larger_better else "min", folder=str(folder),
                         delete_after_train=delete_after_train)
        self.save_folder = str(folder)
