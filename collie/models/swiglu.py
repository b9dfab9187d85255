"""LLaMA's gated MLP, `down(silu(gate(x)) * up(x))`, as one autograd node that keeps only what
backward cannot cheaply make again.

Autograd, op by op, keeps four [tokens × intermediate] tensors from forward to backward: the
gate and up projections, silu(gate) and the product, each as large as 2.75 hidden states in
LLaMA's shapes. This node keeps the projections only, and makes silu(gate) and the product again
in backward, elementwise work next to the three matmuls.

Under activation checkpointing (`collie.models.recomputation`) it keeps its input only. Its first
run then works a block of intermediate columns at a time (no [tokens × intermediate] tensor is
made), its recomputation in backward makes nothing (only what it saves is used), and backward
makes the projections again: two matmuls where the recomputation made three. Where an optimizer
takes the weights' gradients a block at a time as they are made (`collie.row_gradients`, LOMO),
backward too goes a block of intermediate columns at a time, handing each block of the three
gradients over as it is made: the recomputed layer's backward, the peak of a LOMO step, then
holds no [tokens × intermediate] tensor and no weight-sized one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collie import dtypes
from collie.dtypes import at_least_fp32
from collie.models.layers import linear_weight_grad, upcast_linear, upcast_linear_input_grad
from collie.models.recomputation import recomputed_in_backward, recomputing
from collie.row_gradients import block_taker

# Narrower blocks of intermediate columns make matmuls too thin to run at speed.
MIN_BLOCK_COLUMNS = 128


def swiglu_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """`F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)` for plain (not sharded)
    bias-free weights, cast to the activations' dtype a block of rows at a time where theirs
    differs (as `collie.models.layers.Linear` does)."""
    keeps_input_only = recomputed_in_backward() and torch.is_grad_enabled()
    return _SwiGLU.apply(x, gate, up, down, keeps_input_only)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate_w, up_w, down_w, keeps_input_only):
        # The parameters themselves, to find who takes their gradients: under activation
        # checkpointing the saved tensors come back as other objects.
        ctx.params = (gate_w, up_w, down_w)
        if keeps_input_only:
            ctx.save_for_backward(x, gate_w, up_w, down_w)
            if recomputing():
                return x.new_zeros(*x.shape[:-1], down_w.shape[0])  # the output is not used
            return _forward_by_blocks(x, gate_w, up_w, down_w)
        gate = upcast_linear(x, gate_w, None)
        up = upcast_linear(x, up_w, None)
        product = F.silu(gate).mul_(up)
        ctx.save_for_backward(x, gate_w, up_w, down_w, gate, up)
        return upcast_linear(product, down_w, None)

    @staticmethod
    def backward(ctx, grad_out):
        # Each large tensor is deleted after its last use: those made here, and those a checkpoint's
        # recomputation made (checkpoint drops its own reference on unpacking). Without
        # checkpointing autograd keeps the saved ones anyway.
        x, gate_w, up_w, down_w, *projections = ctx.saved_tensors
        needs = ctx.needs_input_grad
        shape = x.shape
        flat_x = x.reshape(-1, shape[-1])
        del x
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        gate, up = (p.reshape(-1, p.shape[-1]) for p in projections) if projections else (None, None)
        del projections
        takers = [block_taker(p) for p in ctx.params]
        if all(needs[1:4]) and all(t is not None for t in takers):
            grad_x = _backward_by_blocks(grad_out, flat_x, gate_w, up_w, down_w, gate, up, takers, needs[0])
            return (grad_x.reshape(shape) if grad_x is not None else None), None, None, None, None
        if gate is None:
            gate, up = upcast_linear(flat_x, gate_w, None), upcast_linear(flat_x, up_w, None)
        grad_product = upcast_linear_input_grad(grad_out, down_w)
        # The product is made again only for the down weight's gradient, and dropped with it.
        grad_down = linear_weight_grad(down_w, grad_out, F.silu(gate).mul_(up), ctx.params[2]) if needs[3] else None
        grad_up = F.silu(gate).mul_(grad_product)
        # silu'(gate) * up * grad_product, written over grad_product.
        grad_gate = torch.ops.aten.silu_backward.grad_input(grad_product.mul_(up), gate, grad_input=grad_product)
        del gate, up, grad_product
        grad_x = None
        if needs[0]:
            grad_x = upcast_linear_input_grad(grad_gate, gate_w)
            grad_x += upcast_linear_input_grad(grad_up, up_w)
            grad_x = grad_x.reshape(shape)
        grad_gate_w = linear_weight_grad(gate_w, grad_gate, flat_x, ctx.params[0]) if needs[1] else None
        grad_up_w = linear_weight_grad(up_w, grad_up, flat_x, ctx.params[1]) if needs[2] else None
        return grad_x, grad_gate_w, grad_up_w, grad_down, None


def _column_blocks(tokens: int, gate_w: torch.Tensor) -> list[slice]:
    """Blocks of intermediate columns: a block of activations [tokens × block] and of a weight
    [block × hidden] each about `UPCAST_BLOCK_ELEMENTS / 4` elements (4 MiB in fp32, the size
    of a gradient block a LOMO update takes), at least `MIN_BLOCK_COLUMNS` wide and at most
    `dtypes.MAX_WORK_BLOCKS` of them."""
    elements = dtypes.UPCAST_BLOCK_ELEMENTS // 4
    width = max(MIN_BLOCK_COLUMNS, min(elements // max(1, tokens), elements // gate_w.shape[1]))
    return dtypes.work_blocks(gate_w.shape[0], width)


def _forward_by_blocks(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor,
                       down_w: torch.Tensor) -> torch.Tensor:
    """The MLP's output summed over blocks of intermediate columns: no [tokens × intermediate]
    tensor is made."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros(flat.shape[0], down_w.shape[0], dtype=at_least_fp32(flat.dtype), device=flat.device)
    for cols in _column_blocks(flat.shape[0], gate_w):
        product = F.silu(F.linear(flat, gate_w[cols].to(flat.dtype))).mul_(F.linear(flat, up_w[cols].to(flat.dtype)))
        _add_product_(out, product, down_w[:, cols].to(flat.dtype).t())
    return out.to(flat.dtype).reshape(*x.shape[:-1], down_w.shape[0])


def _backward_by_blocks(grad_out: torch.Tensor, x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor,
                        down_w: torch.Tensor, gate: torch.Tensor | None, up: torch.Tensor | None,
                        takers: list, needs_input_grad: bool) -> torch.Tensor | None:
    """Backward a block of intermediate columns at a time, each block of the three weights'
    gradients handed to its taker as it is made: the gate and up weights' rows, the down
    weight's columns. Each block of a weight is read for everything else first (a taker may
    update it in place). `gate`, `up`: the saved projections, or None (made again here, a block
    at a time). Returns the input's gradient (2-D), if needed."""
    take_gate, take_up, take_down = takers
    grad_x = torch.zeros(x.shape, dtype=at_least_fp32(x.dtype), device=x.device) if needs_input_grad else None
    for cols in _column_blocks(x.shape[0], gate_w):
        gate_rows, up_rows = gate_w[cols].to(x.dtype), up_w[cols].to(x.dtype)
        gate_cols = F.linear(x, gate_rows) if gate is None else gate[:, cols]
        up_cols = F.linear(x, up_rows) if up is None else up[:, cols]
        grad_product = grad_out @ down_w[:, cols].to(x.dtype)
        take_down((slice(None), cols), grad_out.t() @ F.silu(gate_cols).mul_(up_cols))
        grad_up = F.silu(gate_cols).mul_(grad_product)
        grad_gate = torch.ops.aten.silu_backward.grad_input(grad_product.mul_(up_cols), gate_cols,
                                                            grad_input=grad_product)
        if grad_x is not None:
            _add_product_(grad_x, grad_gate, gate_rows)
            _add_product_(grad_x, grad_up, up_rows)
        take_gate((cols,), grad_gate.t() @ x)
        take_up((cols,), grad_up.t() @ x)
    return grad_x.to(x.dtype) if grad_x is not None else None


def _add_product_(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`total += a @ b`, summed in `total`'s at-least-fp32 dtype: a sum over blocks kept in bf16
    would round once per block."""
    if total.dtype == a.dtype:
        total.addmm_(a, b)
    else:
        total += (a @ b).to(total.dtype)
