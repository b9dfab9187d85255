"""Gradient clipping that is global over every way a model can be split.

`torch.nn.utils.clip_grad_norm_` fails when gradients are a mix of DTensors on different
meshes (tensor parallel next to replicated norms, dp×tp), and it cannot see other pipeline
stages. Here squared norms are summed per (mesh, placements) group, where DTensor's own
reduction makes sharded gradients count once, then summed over pipeline stages.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def grad_norm(parameters: Iterable[torch.nn.Parameter], pp_group: Optional[dist.ProcessGroup] = None,
              norm_type: float = 2.0) -> torch.Tensor:
    """The global L2 norm (or max norm with norm_type=inf) of all gradients, as a 0-d tensor."""
    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict = {}
    for g in grads:
        key = (g.device_mesh, g.placements) if isinstance(g, DTensor) else None
        groups.setdefault(key, []).append(g)
    inf = norm_type == float("inf")
    parts = []
    for members in groups.values():
        # A norm of norms keeps DTensor's partial-norm placement, so full_tensor() reduces
        # over exactly the mesh dims the gradients are sharded on.
        part = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, norm_type, dtype=torch.promote_types(g.dtype, torch.float32))
                         for g in members]), norm_type)
        parts.append(part.full_tensor() if isinstance(part, DTensor) else part)
    if not parts:
        return torch.zeros(())
    parts_t = torch.stack([p.to(parts[0].device) for p in parts])
    total = parts_t.max() if inf else (parts_t ** 2).sum()
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(total, op=dist.ReduceOp.MAX if inf else dist.ReduceOp.SUM, group=pp_group)
    return total if inf else total.sqrt()


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float,
                   pp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Scale gradients so their global norm is at most `max_norm`; returns the norm before."""
    parameters = list(parameters)
    norm = grad_norm(parameters, pp_group)
    # A Python float multiplies plain tensors and DTensors alike (one host sync per step).
    coef = min(1.0, max_norm / (float(norm) + 1e-6))
    for p in parameters:
        if p.grad is not None:
            p.grad.mul_(coef)
    return norm


@torch.no_grad()
def clip_grad_value(parameters: Iterable[torch.nn.Parameter], value: float) -> None:
    for p in parameters:
        if p.grad is not None:
            p.grad.clamp_(-value, value)
