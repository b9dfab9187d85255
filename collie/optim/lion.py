"""Lion: EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of
Optimization Algorithms").

Only one momentum buffer (half of Adam's state) and a sign update of uniform
magnitude; needs a ~3-10x smaller lr than AdamW and a correspondingly larger
weight decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from collie.optim._checks import check_lr_and_betas, evaluate_closure


class Lion(Optimizer):
    """Lion optimizer.

    Per parameter with gradient ``g`` and momentum ``m``::

        p <- p * (1 - lr * weight_decay)
        p <- p - lr * sign(beta1 * m + (1 - beta1) * g)
        m <- beta2 * m + (1 - beta2) * g

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: ``(beta1, beta2)``: interpolation for the update, EMA of the momentum.
        weight_decay: Decoupled weight decay factor.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        check_lr_and_betas(lr, betas)
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; returns the closure's loss, if any."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg = state["exp_avg"]
                p.mul_(1.0 - lr * wd)
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(p.grad, alpha=1.0 - beta2)
        return loss
