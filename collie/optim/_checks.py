"""What the step-after-backward optimizers (Adan, Lion, SophiaG) share: argument checks and
the closure convention of `torch.optim`."""

from __future__ import annotations

from typing import Callable, Optional

import torch


def check_lr_and_betas(lr: float, betas: tuple[float, ...]) -> None:
    if lr <= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid betas: {betas}")


def evaluate_closure(closure: Optional[Callable[[], torch.Tensor]]) -> Optional[torch.Tensor]:
    """The closure's loss (computed with gradients enabled inside a no-grad step), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
