"""CoLLiE's `collie.callbacks`: collie's callbacks under CoLLiE's names and signatures."""

from collie.callbacks.callback import Callback
from collie.callbacks.checkpoint_callback import CheckpointCallback
from collie.callbacks.has_monitor_callback import HasMonitorCallback
from collie.callbacks.load_best_model_callback import LoadBestModelCallback
from collie.callbacks.topk_saver import TopkSaver

__all__ = ["Callback", "CheckpointCallback", "HasMonitorCallback", "LoadBestModelCallback", "TopkSaver"]
