"""The context every forward of a run executes in (training steps, pipeline schedules,
evaluation and generation): bf16/fp16 autocast on GPUs, the attention kernels allowed, and on
GPUs optionally the offloading of what forward keeps for backward to host memory."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

# `use_flash: false`: SDPA chooses among the other kernels (memory-efficient on GPUs, math).
NON_FLASH_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def autocast_dtype(compute, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of `compute.mixed_precision` (the config's compute section), or None.
    GPUs only: on CPU bf16 matmuls are far slower than fp32, so there compute stays in fp32."""
    if compute.mixed_precision == "no" or device.type != "cuda":
        return None
    return torch.bfloat16 if compute.mixed_precision == "bf16" else torch.float16


def offload_context(memory, device: torch.device) -> Optional[ContextManager]:
    """`memory.activation_offload`: tensors saved for backward wait in pinned host memory, copied
    back when backward needs them. GPUs only: on CPUs they already are in host memory."""
    if not memory.activation_offload or device.type != "cuda":
        return None
    return torch.autograd.graph.save_on_cpu(pin_memory=True)


def forward_context(config, device: torch.device) -> ContextManager:
    """The context of a `CollieConfig`'s compute and memory sections."""
    stack = contextlib.ExitStack()
    dtype = autocast_dtype(config.compute, device)
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    if not config.compute.use_flash:
        stack.enter_context(sdpa_kernel(NON_FLASH_BACKENDS))
    offload = offload_context(config.memory, device)
    if offload is not None:
        stack.enter_context(offload)
    return stack
