"""SophiaG: Second-order Clipped Stochastic Optimization with the Gauss-Newton-
Bartlett Hessian estimator (Liu et al., 2023, "Sophia: A Scalable Stochastic
Second-order Optimizer for Language Model Pre-training").

A diagonal Hessian estimate preconditions the momentum, and the per-coordinate
step is clipped so that flat or negative-curvature directions cannot blow up.
The Hessian is refreshed only every ``hessian_update_interval`` steps, which keeps
the average cost close to first-order optimizers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from collie.optim._checks import check_lr_and_betas, evaluate_closure


class SophiaG(Optimizer):
    """SophiaG optimizer.

    Refreshing the Hessian (done by the caller every ``hessian_update_interval``
    steps): sample labels ``y ~ softmax(logits)`` from the model's own output,
    backward the loss against ``y`` and call :meth:`update_hessian`, which folds the
    resulting gradient in as ``h <- beta2 * h + (1 - beta2) * g * g`` (GNB
    estimator). Then clear the gradients and do the ordinary backward and
    :meth:`step`::

        p <- p * (1 - lr * weight_decay)
        m <- beta1 * m + (1 - beta1) * g
        p <- p - lr * clamp(m / (rho * bs * h + eps), -1, 1)

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (the maximum per-coordinate step, thanks to the clipping).
        betas: EMA factors of the gradient and of the Hessian estimate.
        rho: Clipping scale; with ``bs`` it converts curvature into step units.
        weight_decay: Decoupled weight decay factor.
        eps: Added to the denominator for numerical stability.
        hessian_update_interval: How often (in steps) the caller should refresh the
            Hessian; stored for the trainer, not used by the optimizer itself.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        eps: float = 1e-15,
        hessian_update_interval: int = 10,
    ) -> None:
        check_lr_and_betas(lr, betas)
        if rho < 0.0:
            raise ValueError(f"Invalid rho: {rho}")
        if hessian_update_interval < 1:
            raise ValueError(f"hessian_update_interval must be >= 1, got {hessian_update_interval}")
        defaults = {"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay, "eps": eps}
        super().__init__(params, defaults)
        self.hessian_update_interval = hessian_update_interval

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self) -> None:
        """Fold the current gradients (from a backward on sampled labels) into the Hessian EMA."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, bs: int = 5120) -> torch.Tensor | None:
        """Update every parameter that has a gradient.

        Args:
            closure: Optional closure re-evaluating the loss.
            bs: Tokens per batch; scales the curvature in the clipped ratio.

        Returns:
            The closure's loss, if any.
        """
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            lr, rho, eps, wd = group["lr"], group["rho"], group["eps"], group["weight_decay"]
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                p.mul_(1.0 - lr * wd)
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                ratio = (state["exp_avg"] / (rho * bs * state["hessian"] + eps)).clamp_(-1.0, 1.0)
                p.add_(ratio, alpha=-lr)
        return loss
