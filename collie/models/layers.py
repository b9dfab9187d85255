"""Building blocks shared by the model families.

Parameters are cast to the dtype of the activations where they are used, so a model can
store them in one dtype (bf16 for LOMO's memory) and compute in another (fp32 on CPUs, where
bf16 matmuls are slow): the activations carry the compute dtype from the embedding on
(`CollieModel.compute_dtype`). The cast happens inside each layer's forward, so under
activation checkpointing backward recomputes it instead of keeping an upcast copy, and it is
an autograd op, so gradients reach the stored parameters in their own dtype. Linear layers
upcast their weight a block of rows at a time and keep only the stored weight for backward
(`_UpcastLinear`). When the dtypes already agree nothing is cast: no copy, no cost. Under
autocast (mixed precision on GPUs) nothing is cast here: autocast decides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from collie import dtypes
from collie.dtypes import at_least_fp32, row_blocks
from collie.row_gradients import BlockTaker, block_taker, rows_taker, takes_blocks


def cast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` with the parameters cast to the activations' dtype where they are used."""
    if torch.is_autocast_enabled(x.device.type) or (weight.dtype == x.dtype and not takes_blocks(weight)):
        # Autocast chooses the matmul dtype itself; an upcast here would only cost a copy. A
        # weight whose gradient an optimizer takes by blocks goes through `_UpcastLinear`, which
        # hands them over.
        return F.linear(x, weight, bias)
    if isinstance(weight, DTensor) or isinstance(x, DTensor):
        return F.linear(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)
    return _UpcastLinear.apply(x, weight, bias)


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  by_blocks: bool = False) -> torch.Tensor:
    """`F.linear(x, weight.to(x.dtype), bias)` with the weight widened a block of rows at a time
    (no autograd: the callers' backward passes are their own). `by_blocks`: a block at a time even
    where nothing is widened — for a vocabulary-sized weight: MKL keeps the packing buffer of its
    largest product for the rest of the process (measured: 33 MB after one [511 × 2048] @
    [2048 × 32000] product, 8 MB for a block of 2048 rows)."""
    blocks = row_blocks(weight)
    if (weight.dtype == x.dtype and not by_blocks) or len(blocks) == 1:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    # Written block by block into one output: concatenating the blocks would hold it twice.
    out = x.new_empty(*x.shape[:-1], weight.shape[0])
    for rows in blocks:
        out[..., rows] = F.linear(x, weight[rows].to(x.dtype), None if bias is None else bias[rows].to(x.dtype))
    return out


def upcast_linear_input_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`grad_out @ weight.to(grad_out.dtype)` for a 2-D `grad_out`, widening a block of rows of
    the weight at a time: the input's gradient of :func:`upcast_linear`."""
    if weight.dtype == grad_out.dtype:
        return grad_out @ weight
    grad_x = grad_out.new_zeros(grad_out.shape[0], weight.shape[1])
    for rows in row_blocks(weight):
        grad_x.addmm_(grad_out[:, rows], weight[rows].to(grad_out.dtype))
    return grad_x


def linear_weight_grad(weight: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor,
                       param: torch.Tensor | None = None) -> torch.Tensor | None:
    """The gradient of `weight` in `y = x @ weight.T`, from the 2-D `grad_out` [n, out] and `x`
    [n, in] (both in the compute dtype): handed over a block of rows at a time where an optimizer
    takes it that way (`collie.row_gradients`: as made, or on demand; then None), else made whole
    in the weight's own dtype, a block of rows at a time where that is narrower (no whole wide
    copy). `param`: the
    parameter itself where `weight` may be another tensor object for it (a saved tensor unpacked
    by activation checkpointing is an alias)."""
    param = weight if param is None else param
    take = block_taker(param)
    if take is not None:
        hand_over_weight_grad(take, grad_out, x)
        return None
    taker = rows_taker(param)
    if taker is not None:
        taker(lambda rows: grad_out[:, rows].t() @ x)
        return None
    if weight.dtype == grad_out.dtype:
        return grad_out.t() @ x
    grad_w = torch.empty_like(weight)
    for rows in row_blocks(weight):
        grad_w[rows] = grad_out[:, rows].t() @ x
    return grad_w


def hand_over_weight_grad(take: BlockTaker, grad_out: torch.Tensor, x: torch.Tensor, first_row: int = 0) -> None:
    """Hand `take` the weight gradient `grad_out.t() @ x` a block of rows at a time (about
    `UPCAST_BLOCK_ELEMENTS / 4` elements each), as the parameter's rows from `first_row` on (a
    caller that works over a block of the weight's rows gives its start)."""
    width = max(1, dtypes.UPCAST_BLOCK_ELEMENTS // 4 // max(1, x.shape[1]))
    for start in range(0, grad_out.shape[1], width):
        stop = min(start + width, grad_out.shape[1])
        take((slice(first_row + start, first_row + stop),), grad_out[:, start:stop].t() @ x)


class _UpcastLinear(torch.autograd.Function):
    """`F.linear(x, weight.to(x.dtype), bias)` that saves the stored (e.g. bf16) weight for
    backward, not its upcast copy, and upcasts it a block of rows at a time in forward and
    backward. With `.to` autograd would keep an fp32 copy of every weight of a layer from its
    forward (or its recomputation) to its backward: 0.8 GB per 7B layer, 0.5 GB for the head.
    The weight's gradient is made block by block straight into its own dtype, or handed over by
    rows (`linear_weight_grad`): also why a weight in the activations' dtype comes here where an
    optimizer takes its gradient a block at a time (LOMO: no whole gradient of any matrix)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        ctx.param = weight  # to find who takes its gradient by rows (see `linear_weight_grad`)
        return upcast_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = upcast_linear_input_grad(flat_grad, weight).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = linear_weight_grad(weight, flat_grad, x.reshape(-1, x.shape[-1]), ctx.param)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0).to(bias.dtype)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast_linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if (dtype == at_least_fp32(dtype) and self.weight.dtype == dtype and not isinstance(x, DTensor)
                and not isinstance(self.weight, DTensor) and not torch.is_autocast_enabled(x.device.type)):
            return _RMSNorm.apply(x, self.weight, self.eps)
        # Normalise in at least fp32 whatever the compute dtype, as the reference implementation does.
        x = x.to(at_least_fp32(dtype))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # Type promotion makes a half-precision weight compute in the activations' dtype.
        return self.weight * x.to(dtype)


class _RMSNorm(torch.autograd.Function):
    """`weight * (x * rsqrt(mean(x²) + eps))` keeping x and the per-row scale for backward, not
    the normalised x as well (op by op, autograd keeps both: a hidden state more per norm)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, scale)
        return weight * (x * scale)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, scale = ctx.saved_tensors
        normed = x * scale
        grad_w = (grad_out * normed).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        grad_normed = grad_out * weight
        # d/dx of x * scale(x): scale * (g - normed * mean(g * normed)) along the last dim.
        grad_x = (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True)).mul_(scale)
        return grad_x, grad_w, None


class LayerNorm(nn.Module):
    """LayerNorm with a bias, normalising in at least fp32 (as RMSNorm above)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(at_least_fp32(dtype))
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return self.weight * x.to(dtype) + self.bias
