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
    parts = []
    for members in groups.values():
        # A norm of norms keeps DTensor's partial-norm placement, so full_tensor() reduces
        # over exactly the mesh dims the gradients are sharded on.
        part = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g, norm_type, dtype=torch.promote_types(g.dtype, torch.float32))
                         for g in members]), norm_type)
        parts.append(part.full_tensor() if isinstance(part, DTensor) else part)
    return total_norm(parts, pp_group, norm_type)


def total_norm(norms: list[torch.Tensor], pp_group: Optional[dist.ProcessGroup] = None,
               norm_type: float = 2.0, device: Optional[torch.device] = None) -> torch.Tensor:
    """The norm of a set of tensors from their norms (each already whole over data and tensor
    parallel shards), combined over pipeline stages. Shared by clipping and LOMO/AdaLomo."""
    inf = norm_type == float("inf")
    if norms:
        stacked = torch.stack([n.to(device or norms[0].device) for n in norms])
        total = stacked.max() if inf else (stacked ** 2).sum()
    else:
        total = torch.zeros((), device=device)
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
