"""Adan: Adaptive Nesterov Momentum (Xie et al., 2022, "Adan: Adaptive Nesterov
Momentum Algorithm for Faster Optimizing Deep Models").

Nesterov momentum estimated from gradient differences, so no extra forward at the
extrapolated point is needed; follows the official implementation (sail-sg/Adan),
including its ``betas`` convention (EMA factors, i.e. one minus the paper's betas).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from collie.optim._checks import check_lr_and_betas, evaluate_closure


class Adan(Optimizer):
    """Adan optimizer.

    Per parameter at step ``k`` with gradient ``g`` and previous gradient ``g_prev``
    (``g_prev = g`` at step 1, so the first difference is zero)::

        diff = g - g_prev
        m <- beta1 * m + (1 - beta1) * g
        d <- beta2 * d + (1 - beta2) * diff
        n <- beta3 * n + (1 - beta3) * (g + beta2 * diff) ** 2
        denom = sqrt(n / (1 - beta3**k)) + eps
        p <- p - lr * (m / (1 - beta1**k) + beta2 * d / (1 - beta2**k)) / denom

    Weight decay: by default the proximal form of the paper,
    ``p <- p / (1 + lr * weight_decay)`` after the step; with ``no_prox=True``
    the decoupled form ``p <- p * (1 - lr * weight_decay)`` before it.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        betas: EMA factors of the gradient, the gradient difference and the
            squared Nesterov gradient.
        eps: Added to the denominator for numerical stability.
        weight_decay: Weight decay factor.
        no_prox: Use decoupled instead of proximal weight decay.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        no_prox: bool = False,
    ) -> None:
        check_lr_and_betas(lr, betas)
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "no_prox": no_prox}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update every parameter that has a gradient; returns the closure's loss, if any."""
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2, beta3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_diff"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["prev_grad"] = grad.clone()
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq, exp_avg_diff = state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"]

                diff = grad - state["prev_grad"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_diff.mul_(beta2).add_(diff, alpha=1.0 - beta2)
                nesterov_grad = diff.mul_(beta2).add_(grad)
                exp_avg_sq.mul_(beta3).addcmul_(nesterov_grad, nesterov_grad, value=1.0 - beta3)
                state["prev_grad"].copy_(grad)

                denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta3**step)).add_(eps)
                step_size = lr / (1.0 - beta1**step)
                step_size_diff = lr * beta2 / (1.0 - beta2**step)
                if group["no_prox"]:
                    p.mul_(1.0 - lr * wd)
                p.addcdiv_(exp_avg, denom, value=-step_size)
                p.addcdiv_(exp_avg_diff, denom, value=-step_size_diff)
                if not group["no_prox"]:
                    p.div_(1.0 + lr * wd)
        return loss
