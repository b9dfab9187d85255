from collie.events import Callback
from collie.trainer.trainer import Trainer

__all__ = ["Callback", "Trainer"]
