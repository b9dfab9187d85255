"""LLaMA's gated MLP, `down(silu(gate(x)) * up(x))`, as one autograd node that keeps only what
backward cannot cheaply make again.

Autograd, op by op, keeps four [tokens × intermediate] tensors from forward to backward: the
gate and up projections, silu(gate) and the product, each as large as 2.75 hidden states in
LLaMA's shapes. This node keeps the projections only, and makes silu(gate) and the product again
in backward, elementwise work next to the three matmuls. Backward holds at most four such
tensors at once, the weights' gradients included where an optimizer takes them by rows
(`collie.row_gradients`), where autograd holds five and a whole weight-sized gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from collie.models.layers import linear_weight_grad, upcast_linear, upcast_linear_input_grad


def swiglu_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """`F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)` for plain (not sharded)
    bias-free weights, cast to the activations' dtype a block of rows at a time where theirs
    differs (as `collie.models.layers.Linear` does)."""
    return _SwiGLU.apply(x, gate, up, down)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate_w, up_w, down_w):
        gate = upcast_linear(x, gate_w, None)
        up = upcast_linear(x, up_w, None)
        product = F.silu(gate).mul_(up)
        ctx.save_for_backward(x, gate_w, up_w, down_w, gate, up)
        # The parameters themselves, to find who takes their gradients by rows: under activation
        # checkpointing the saved tensors come back as other objects.
        ctx.params = (gate_w, up_w, down_w)
        return upcast_linear(product, down_w, None)

    @staticmethod
    def backward(ctx, grad_out):
        x, gate_w, up_w, down_w, gate, up = ctx.saved_tensors
        needs = ctx.needs_input_grad
        flat_x = x.reshape(-1, x.shape[-1])
        gate, up = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])
        grad_product = upcast_linear_input_grad(grad_out, down_w)
        grad_down = None
        if needs[3]:
            product = F.silu(gate).mul_(up)
            grad_down = linear_weight_grad(down_w, grad_out, product, ctx.params[2])
            del product
        grad_up = F.silu(gate).mul_(grad_product)
        grad_gate = torch.ops.aten.silu_backward(grad_product.mul_(up), gate)
        del grad_product
        grad_x = None
        if needs[0]:
            grad_x = upcast_linear_input_grad(grad_gate, gate_w)
            grad_x += upcast_linear_input_grad(grad_up, up_w)
            grad_x = grad_x.reshape(x.shape)
        grad_gate_w = linear_weight_grad(gate_w, grad_gate, flat_x, ctx.params[0]) if needs[1] else None
        grad_up_w = linear_weight_grad(up_w, grad_up, flat_x, ctx.params[1]) if needs[2] else None
        return grad_x, grad_gate_w, grad_up_w, grad_down

