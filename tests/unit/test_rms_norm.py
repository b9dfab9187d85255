"""RMSNorm as one autograd node: the op-by-op numbers (float64), the input and one scale per row
kept for backward instead of also the normalised input, and the op-by-op path where the weight's
dtype is not the activations'."""

from __future__ import annotations

import torch

from collie.models.layers import RMSNorm

HIDDEN = 64


def _op_by_op(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    xf = x.to(torch.float32) if x.dtype != torch.float64 else x
    return norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)


def _norm() -> RMSNorm:
    torch.manual_seed(0)
    norm = RMSNorm(HIDDEN, 1e-6).double()
    with torch.no_grad():
        norm.weight.normal_()
    return norm


def test_one_node_gives_the_op_by_op_values_and_gradients() -> None:
    norm = _norm()
    x = torch.randn(3, 7, HIDDEN, dtype=torch.float64, requires_grad=True)
    reference = _norm()
    x_ref = x.detach().clone().requires_grad_()
    out, want = norm(x), _op_by_op(reference, x_ref)
    assert torch.equal(out, want)
    grad = torch.randn_like(out)
    out.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(norm.weight.grad, reference.weight.grad, atol=1e-12, rtol=0)


def test_keeps_the_input_and_a_scale_per_row() -> None:
    norm = _norm()
    x = torch.randn(3, 7, HIDDEN, dtype=torch.float64, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
        norm(x)
    assert sum(kept) == x.numel() + 3 * 7 + HIDDEN  # x, the scales, the weight


def test_a_narrower_weight_takes_the_op_by_op_path() -> None:
    norm = RMSNorm(HIDDEN, 1e-6).to(torch.bfloat16)
    x = torch.randn(2, HIDDEN, requires_grad=True)
    out = norm(x)
    assert out.dtype == torch.float32 and type(out.grad_fn).__name__ == "MulBackward0"
    assert torch.equal(out, _op_by_op(norm, x))
