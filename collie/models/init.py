"""Reproducible random initialisation, tensor by tensor.

Each tensor draws from its own generator seeded by (seed, tensor name), so the values do
not depend on construction order, on which rank builds which part, or on whether the
tensor is created in a model or streamed straight to a file (`collie init-model`).
"""

from __future__ import annotations

import zlib
from typing import Optional

import torch


def init_tensor(name: str, shape: tuple[int, ...], seed: int, std: float, method: str = "normal",
                dtype: torch.dtype = torch.float32, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The tensor `name`'s initial values in `dtype`; `out`: an fp32 tensor of `shape` to fill
    in place instead (no temporary)."""
    target = torch.empty(shape, dtype=torch.float32) if out is None else out
    if name.endswith("norm.weight"):
        target.fill_(1.0)
    elif name.endswith(".bias") or method == "none":
        target.zero_()
    elif method == "normal":
        target.normal_(0.0, std, generator=named_generator(name, seed))
    elif method == "xavier_normal":
        fan_out, fan_in = shape[0], shape[-1]
        target.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5, generator=named_generator(name, seed))
    elif method == "kaiming_normal":
        target.normal_(0.0, (2.0 / shape[-1]) ** 0.5, generator=named_generator(name, seed))
    else:
        raise ValueError(f"init_method: {method!r} is not one of normal, xavier_normal, kaiming_normal, none")
    return target if out is not None else target.to(dtype)


def named_generator(name: str, seed: int) -> torch.Generator:
    """A CPU generator of its own for the tensor `name`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
