"""AdaLomo: LOMO with adaptive learning rate (Lv et al., 2023, "AdaLomo: Low-memory
Optimization with Adaptive Learning Rate").

Adds an Adafactor-style second moment to LOMO: factored (row and column statistics)
for matrices so it costs O(rows + cols) memory instead of O(rows * cols), plain
for vectors. Drop-in compatible with ``lomo_optim.AdaLomo``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torch.distributed.tensor import DTensor

from collie.distributed.shards import local_region, whole
from collie.dtypes import at_least_fp32
from collie.optim._fused import FusedBackwardOptimizer, full_or_local, working_copy, store_working_copy
from collie.optim._loss_scaler import DynamicLossScaler


class AdaLomo(FusedBackwardOptimizer):
    """Adafactor-like adaptive update fused into backward.

    Per parameter at step ``t`` with at-least-fp32 gradient ``g`` (after optional clipping):

    1. ``beta2 = 1 - t ** decay_rate`` (so step 1 uses only the current gradient);
       ``s = g**2 + eps[0]``.
    2. Parameters with >= 2 dims keep EMAs of ``s`` averaged over the last dim
       (``exp_avg_sq_row``) and over the second-last dim (``exp_avg_sq_col``) and
       use ``u = g / sqrt(row col^T / mean(row))``; others keep a full EMA
       ``exp_avg_sq`` and use ``u = g / sqrt(exp_avg_sq)``.
    3. Grouped update normalisation: ``u /= max(1, RMS(u) / clip_threshold)``.
    4. Relative step size: ``step = lr * max(eps[1], RMS(p))``;
       ``p <- p * (1 - step * weight_decay) - step * u``.

    Global-norm clipping costs a second backward pass (see :meth:`grad_norm`).

    Loss scaling: the reference always multiplies the loss by a static
    ``loss_scale``. For fp32/bf16 a power-of-two static scale does not change the
    update, so it is not applied; for fp16 parameters ``loss_scale`` is the initial
    scale of a :class:`DynamicLossScaler`, which skips overflowing steps (detected
    in a :meth:`grad_norm` pass, run automatically) instead of writing inf/nan.

    Args:
        model: Model whose trainable parameters are optimized.
        lr: Learning rate (``param_groups[0]["lr"]``, driven by LR schedulers).
        loss_scale: Initial fp16 loss scale; falsy disables fp16 loss scaling.
        eps: ``(eps[0], eps[1])``: added to squared gradients; lower bound of the
            parameter RMS used to scale the step (lets zero-initialised params move).
        clip_threshold: Max RMS of the normalised update.
        decay_rate: Exponent of the second-moment decay schedule (negative).
        clip_grad_norm: Max global L2 norm of the gradient, or None.
        clip_grad_value: Clamp every gradient element to ``[-v, v]``, or None.
        weight_decay: Weight decay factor, scaled by the relative step size.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        loss_scale: float = 2**10,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        self.loss_scale = loss_scale
        self.eps = eps
        self.clip_threshold = clip_threshold
        self.decay_rate = decay_rate
        super().__init__(model, {"lr": lr, "weight_decay": weight_decay}, clip_grad_norm, clip_grad_value)

    def _wants_loss_scaler(self) -> bool:
        return bool(self.loss_scale) and self._has_fp16_params()

    def _new_loss_scaler(self) -> DynamicLossScaler:
        return DynamicLossScaler(init_scale=self.loss_scale)

    def _rms(self, tensor: torch.Tensor) -> torch.Tensor:
        """Root mean square of a whole parameter-shaped tensor (global if it is sharded)."""
        return whole(torch.linalg.vector_norm(tensor)) / math.sqrt(tensor.numel())

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zero second-moment statistics, at least fp32, on the parameter's device."""
        zeros = dict(dtype=at_least_fp32(p.dtype), device=p.device)
        if p.dim() >= 2:
            return {
                "exp_avg_sq_row": torch.zeros(p.shape[:-1], **zeros),
                "exp_avg_sq_col": torch.zeros(p.shape[:-2] + p.shape[-1:], **zeros),
            }
        return {"exp_avg_sq": torch.zeros(p.shape, **zeros)}

    def _update_param(self, p: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        # The second-moment statistics are small (rows + cols per matrix) and kept whole on
        # every rank, so they do not depend on the layout and reshard trivially; the update
        # itself is computed on this rank's shard only.
        state = self.state[p]
        if not state:
            state.update(self._init_state(p))
        beta2 = 1.0 - math.pow(self._step_count, self.decay_rate)
        sq = grad.square().add_(self.eps[0])
        region = local_region(grad)
        local_grad = full_or_local(grad)
        if grad.dim() >= 2:
            row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
            row.mul_(beta2).add_(whole(sq.mean(dim=-1)), alpha=1.0 - beta2)
            col.mul_(beta2).add_(whole(sq.mean(dim=-2)), alpha=1.0 - beta2)
            # 1 / sqrt(V) for Adafactor's rank-1 estimate V = row col^T / mean(row).
            r_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_()[region[:-1]].unsqueeze(-1)
            c_factor = col[region[:-2] + region[-1:]].unsqueeze(-2).rsqrt()
            update = (r_factor * c_factor).mul_(local_grad)
        else:
            exp_avg_sq = state["exp_avg_sq"]
            exp_avg_sq.mul_(beta2).add_(whole(sq), alpha=1.0 - beta2)
            update = exp_avg_sq[region].rsqrt().mul_(local_grad)
        whole_update = update if not isinstance(grad, DTensor) else DTensor.from_local(
            update, grad.device_mesh, grad.placements, shape=grad.shape, stride=grad.stride())
        update.div_((self._rms(whole_update) / self.clip_threshold).clamp_(min=1.0))
        work = working_copy(p)
        step_size = lr * self._rms(work).clamp(min=self.eps[1])
        weight_decay = self.param_groups[0]["weight_decay"]
        local_work = full_or_local(work)
        if weight_decay > 0.0:
            local_work.mul_(1.0 - step_size * weight_decay)
        local_work.sub_(update.mul_(step_size))
        store_working_copy(p, work)
