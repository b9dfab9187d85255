"""Building blocks shared by the model families.

Parameters are cast to the dtype of the activations where they are used, so a model can
store them in one dtype (bf16 for LOMO's memory) and compute in another (fp32 on CPUs, where
bf16 matmuls are slow): the activations carry the compute dtype from the embedding on
(`CollieModel.compute_dtype`). The cast happens inside each layer's forward, so under
activation checkpointing backward recomputes it instead of keeping an upcast copy, and it is
an autograd op, so gradients reach the stored parameters in their own dtype. When the dtypes
already agree, `.to` returns the parameter itself: no copy, no cost. Under autocast (mixed
precision on GPUs) nothing is cast here: autocast decides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from collie.dtypes import at_least_fp32


def cast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` with the parameters cast to the activations' dtype where they are used."""
    if torch.is_autocast_enabled(x.device.type):
        # Autocast chooses the matmul dtype itself; an upcast here would only cost a copy.
        return F.linear(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast_linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in at least fp32 whatever the compute dtype, as the reference implementation does.
        dtype = x.dtype
        x = x.to(at_least_fp32(dtype))
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # Type promotion makes a half-precision weight compute in the activations' dtype.
        return self.weight * x.to(dtype)


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
