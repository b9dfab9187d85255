"""AdaLomo: LOMO with adaptive learning rate (Lv et al., 2023, "AdaLomo: Low-memory
Optimization with Adaptive Learning Rate").

Adds an Adafactor-style second moment to LOMO: factored (row and column statistics)
for matrices so it costs O(rows + cols) memory instead of O(rows * cols), plain
for vectors. Drop-in compatible with ``lomo_optim.AdaLomo``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from collie.dtypes import at_least_fp32, row_blocks
from collie.optim._fused import (
    FusedBackwardOptimizer,
    RowGradient,
    blocks_of,
    dense_rows,
    rows_of,
    update_in_row_blocks,
)
from collie.optim._loss_scaler import DynamicLossScaler
from collie.tensors import local_region, local_tensor, whole


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
        values = tensor.values() if tensor.is_sparse else tensor
        return whole(torch.linalg.vector_norm(values)) / math.sqrt(tensor.numel())

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zero second-moment statistics, at least fp32, on the parameter's device."""
        zeros = dict(dtype=at_least_fp32(p.dtype), device=p.device)
        if p.dim() >= 2:
            return {
                "exp_avg_sq_row": torch.zeros(p.shape[:-1], **zeros),
                "exp_avg_sq_col": torch.zeros(p.shape[:-2] + p.shape[-1:], **zeros),
            }
        return {"exp_avg_sq": torch.zeros(p.shape, **zeros)}

    def _update_param(self, p: torch.Tensor, grad: torch.Tensor | RowGradient, lr: float) -> None:
        # The second-moment statistics are small (rows + cols per matrix) and kept whole on
        # every rank, so they do not depend on the layout and reshard trivially; the update
        # itself is computed on this rank's shard only, a block of rows at a time, so no
        # temporary of the parameter's size exists (for the embedding and head of a 1B model
        # each would be 0.25 GB).
        state = self.state[p]
        if not state:
            state.update(self._init_state(p))
        beta2 = 1.0 - math.pow(self._step_count, self.decay_rate)
        if isinstance(grad, RowGradient) or self._widened_by_blocks(grad):
            gradient_rows = rows_of(grad)
            update_rows, clip = self._update_by_blocks(blocks_of(grad) or row_blocks(grad),
                                                       lambda rows: self._prepared(gradient_rows(rows)),
                                                       grad.shape, state, beta2)
        else:
            update_rows, clip = self._update_in_gradient(grad, state, beta2)
        step_size = lr * self._param_rms(p).clamp(min=self.eps[1])
        weight_decay = self.param_groups[0]["weight_decay"]

        def apply(work: torch.Tensor, update: torch.Tensor) -> None:
            if weight_decay > 0.0:
                work.mul_(1.0 - step_size * weight_decay)
            work.sub_(update.div_(clip).mul_(step_size))

        update_in_row_blocks(p, update_rows, apply, blocks_of(grad))

    def _updates_by_rows(self, p: torch.Tensor) -> bool:
        """Each block of a gradient taken by rows is made three times (squared means, the update's
        RMS, the update), one matmul each: worth it for the largest matrices only (a LLaMA's
        vocabulary-sized head, whose gradient is the largest buffer of the step), not for
        matrices whose gradient is about the size of the activations beside it."""
        largest = max(q.numel() for _, q in self._named_params if q.dim() == 2)
        return 2 * p.numel() >= largest

    @staticmethod
    def _widened_by_blocks(grad: torch.Tensor) -> bool:
        """Whether `grad` is a plain dense matrix narrower than fp32 (a bf16 model's): its
        at-least-fp32 copy is made a block of rows at a time, never whole (a 7B head's would be
        0.5 GB). Sharded gradients are widened a shard at a time; vectors are small."""
        return (not isinstance(grad, DTensor) and not grad.is_sparse and grad.dim() == 2
                and grad.dtype != at_least_fp32(grad.dtype))

    def _update_in_gradient(self, grad: torch.Tensor, state: dict, beta2: float):
        """The update made in the at-least-fp32 gradient's own buffer: its rows, and the clip."""
        grad = self._prepared(grad)
        region = local_region(grad)
        local_grad = local_tensor(grad)
        if grad.dim() >= 2:
            r_factor, c_factor = self._factors(
                state, *self._squared_means(_blocks(grad), lambda rows: dense_rows(grad, rows), grad.shape), beta2)
            r_factor = r_factor[region[:-1]].unsqueeze(-1)
            c_factor = c_factor[region[:-2] + region[-1:]].unsqueeze(-2)
            if grad.is_sparse:  # an embedding's: the update is zero where the gradient is
                grad.values().mul_(r_factor[grad.indices()[0]] * c_factor)
            else:
                for rows in _blocks(local_grad):
                    local_grad[rows].mul_(r_factor[rows] * c_factor)
        else:
            exp_avg_sq = state["exp_avg_sq"]
            exp_avg_sq.mul_(beta2).add_(whole(grad.square().add_(self.eps[0])), alpha=1.0 - beta2)
            local_grad.mul_(exp_avg_sq[region].rsqrt())
        return rows_of(grad), (self._rms(grad) / self.clip_threshold).clamp_(min=1.0)

    def _update_by_blocks(self, blocks: list, prepared_rows: Callable[[slice], torch.Tensor], shape: torch.Size,
                          state: dict, beta2: float):
        """The update of a matrix whose at-least-fp32 gradient is only ever made a block of rows
        at a time (`prepared_rows(rows)`, a fresh buffer: a narrow gradient widened, see
        `_widened_by_blocks`, or one its backward hands over by rows), recomputed in each of three
        passes (squared means, the update's RMS, the update): work traded for a whole fp32
        gradient."""
        r_factor, c_factor = self._factors(state, *self._squared_means(blocks, prepared_rows, shape), beta2)
        r_factor, c_factor = r_factor.unsqueeze(-1), c_factor.unsqueeze(-2)

        def update_rows(rows) -> torch.Tensor:
            return prepared_rows(rows).mul_(r_factor[rows] * c_factor)

        squares = sum(update_rows(rows).square().sum() for rows in blocks)
        rms = squares.sqrt() / math.sqrt(shape.numel())
        return update_rows, (rms / self.clip_threshold).clamp_(min=1.0)

    def _factors(self, state: dict, row_mean: torch.Tensor, col_mean: torch.Tensor,
                 beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the step's squared means into the EMAs; 1 / sqrt(V) for Adafactor's rank-1
        estimate V = row col^T / mean(row), as its row and column factors (whole)."""
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row.mul_(beta2).add_(row_mean, alpha=1.0 - beta2)
        col.mul_(beta2).add_(col_mean, alpha=1.0 - beta2)
        return (row / row.mean(dim=-1, keepdim=True)).rsqrt_(), col.rsqrt()

    def _squared_means(self, blocks: list, rows_fn: Callable[[slice], torch.Tensor],
                       shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Means of ``g**2 + eps[0]`` over the last and the second-last dim, whole, where
        `rows_fn(rows)` gives a block of rows of the at-least-fp32 gradient ``g`` of `shape`."""
        row_means, col_sum = [], None
        for rows in blocks:
            sq = rows_fn(rows).square().add_(self.eps[0])
            row_means.append(whole(sq.mean(dim=-1)))
            part = whole(sq.sum(dim=-2))
            col_sum = part if col_sum is None else col_sum.add_(part)
        return torch.cat(row_means), col_sum.div_(shape[-2])

    def _param_rms(self, p: torch.Tensor) -> torch.Tensor:
        """RMS of the parameter in at least fp32, widening a block of rows at a time."""
        local = local_tensor(p.detach())
        if isinstance(p, DTensor) or local.dtype == at_least_fp32(local.dtype):
            return self._rms(p.detach().to(at_least_fp32(p.dtype)))
        squares = sum(torch.linalg.vector_norm(local[rows].to(at_least_fp32(local.dtype))).square()
                      for rows in row_blocks(local))
        return squares.sqrt() / math.sqrt(local.numel())


def _blocks(tensor: torch.Tensor) -> list:
    """Row blocks of a plain matrix; a sharded tensor or one of more dims in one piece."""
    return row_blocks(tensor) if tensor.dim() == 2 and not isinstance(tensor, DTensor) else [...]
