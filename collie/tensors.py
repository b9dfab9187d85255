"""DTensor helpers in one place: the whole value, this rank's local shard, where that shard sits
in the whole tensor, and filling shards from whole tensors. Plain tensors pass through. Also
CoLLiE's `broadcast_tensor` (a tensor only one rank holds, to every rank)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor holding the whole value (gathers or completes a DTensor's reduction)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole (gathered) value on the CPU, detached: what an export writes."""
    return whole(tensor).detach().cpu()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's local shard of a DTensor (the storage collectives and in-place updates act
    on); a plain tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_region(tensor: torch.Tensor) -> tuple[slice, ...]:
    """Index of this rank's shard of `tensor` within the whole tensor (everything if plain)."""
    if not isinstance(tensor, DTensor):
        return tuple(slice(None) for _ in tensor.shape)
    # Private, but it is what DCP itself uses to place shards; there is no public equivalent.
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tuple(slice(o, o + n) for o, n in zip(offset, shape))


@torch.no_grad()
def copy_whole_into(target: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy a whole tensor into `target`, which may hold only a shard of it (no communication)."""
    if isinstance(target, DTensor):
        target.to_local().copy_(whole[local_region(target)])
    else:
        target.copy_(whole)


def broadcast_tensor(tensor: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None, src: int = 0,
                     shape: Optional[tuple] = None, ndim: Optional[int] = None, group=None) -> torch.Tensor:
    """CoLLiE's broadcast of a tensor only rank `src` holds (the others pass None): its shape and
    dtype travel first unless given (`ndim` is accepted for CoLLiE's signature; the shape says it)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return tensor
    is_src = dist.get_rank() == src
    if shape is None or dtype is None:
        meta = [(tuple(tensor.shape), tensor.dtype) if is_src else None]
        dist.broadcast_object_list(meta, src=src, group=group)
        shape, dtype = meta[0][0] if shape is None else shape, meta[0][1] if dtype is None else dtype
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    buffer = tensor.to(device=device, dtype=dtype).contiguous() if is_src else torch.empty(shape, dtype=dtype, device=device)
    dist.broadcast(buffer, src=src, group=group)
    return buffer
