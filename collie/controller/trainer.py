"""CoLLiE's `collie.controller.trainer`: collie's Trainer takes CoLLiE's arguments itself."""

from collie.trainer.trainer import Trainer

__all__ = ["Trainer"]
