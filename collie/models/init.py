"""Reproducible random initialisation, tensor by tensor.

Each tensor draws from its own generator seeded by (seed, tensor name), so the values do
not depend on construction order, on which rank builds which part, or on whether the
tensor is created in a model or streamed straight to a file (`collie init-model`).
"""

from __future__ import annotations

import zlib

import torch


def init_tensor(name: str, shape: tuple[int, ...], seed: int, std: float, method: str = "normal",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias") or method == "none":
        return torch.zeros(shape, dtype=dtype)
    generator = named_generator(name, seed)
    out = torch.empty(shape, dtype=torch.float32)
    if method == "normal":
        out.normal_(0.0, std, generator=generator)
    elif method == "xavier_normal":
        fan_out, fan_in = shape[0], shape[-1]
        out.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5, generator=generator)
    elif method == "kaiming_normal":
        out.normal_(0.0, (2.0 / shape[-1]) ** 0.5, generator=generator)
    else:
        raise ValueError(f"init_method: {method!r} is not one of normal, xavier_normal, kaiming_normal, none")
    return out.to(dtype)


def named_generator(name: str, seed: int) -> torch.Generator:
    """A CPU generator of its own for the tensor `name`."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
