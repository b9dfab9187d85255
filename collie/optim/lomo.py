"""LOMO: LOw-Memory Optimization (Lv et al., 2023, "Full Parameter Fine-tuning for
Large Language Models with Limited Resources").

Plain SGD whose update is fused into backward: each parameter is updated the moment
its gradient is complete and that gradient is freed, so neither optimizer state nor
a full set of gradients is ever held. Drop-in compatible with ``lomo_optim.Lomo``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from collie.optim._fused import FusedBackwardOptimizer, blocks_of, rows_of, update_in_row_blocks
from collie.optim._loss_scaler import DynamicLossScaler

logger = logging.getLogger(__name__)


class Lomo(FusedBackwardOptimizer):
    """SGD fused into backward.

    Update per parameter (after optional value clipping and global-norm scaling of
    the gradient ``g``): ``p <- p * (1 - lr * weight_decay) - lr * g``, i.e. exactly
    ``torch.optim.SGD`` with the same ``weight_decay`` and no momentum.

    Global-norm clipping (``clip_grad_norm``) costs a second backward pass: see
    :meth:`grad_norm`. With fp16 parameters (or whenever ``loss_scale_args`` is
    given) a :class:`DynamicLossScaler` scales the loss; as in the reference, the
    overflow check rides on the :meth:`grad_norm` pass and ``clip_grad_norm``
    defaults to 1.0 in that case. bf16/fp32 parameters need no scaler.

    Typical use without a trainer::

        opt = Lomo(model, lr=1e-3, clip_grad_norm=1.0)
        for batch in data:
            opt.backward(model(batch).loss)  # updates the parameters

    or, exactly as with ``lomo_optim``: ``opt.grad_norm(loss); opt.fused_backward(loss, lr)``.

    Args:
        model: Model whose trainable parameters are optimized; hooks are registered
            on them at construction.
        lr: Learning rate (``param_groups[0]["lr"]``, driven by LR schedulers).
        clip_grad_norm: Max global L2 norm of the gradient, or None.
        clip_grad_value: Clamp every gradient element to ``[-v, v]``, or None.
        weight_decay: Weight decay factor, applied as ``torch.optim.SGD`` does.
        loss_scale_args: Keyword arguments of :class:`DynamicLossScaler`; giving
            them turns loss scaling on regardless of dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        weight_decay: float = 0.0,
        loss_scale_args: dict[str, Any] | None = None,
    ) -> None:
        self.loss_scale_args = loss_scale_args
        super().__init__(model, {"lr": lr, "weight_decay": weight_decay}, clip_grad_norm, clip_grad_value)

    def _wants_loss_scaler(self) -> bool:
        return self.loss_scale_args is not None or self._has_fp16_params()

    def _new_loss_scaler(self) -> DynamicLossScaler:
        if self.clip_grad_norm is None:
            # The reference does the same: the norm pass is where overflow is caught.
            logger.warning("Loss scaling is used with gradient-norm clipping; setting clip_grad_norm to 1.0.")
            self.clip_grad_norm = 1.0
        return DynamicLossScaler(**(self.loss_scale_args or {}))

    def _update_blocks_alone(self, p: torch.Tensor) -> bool:
        return True  # SGD, elementwise

    def _update_param(self, p: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        weight_decay = self.param_groups[0]["weight_decay"]

        def sgd(work: torch.Tensor, grad_rows: torch.Tensor) -> None:
            if weight_decay > 0.0:
                work.mul_(1.0 - lr * weight_decay)
            work.add_(self._prepared(grad_rows), alpha=-lr)

        update_in_row_blocks(p, rows_of(grad), sgd, blocks_of(grad))
