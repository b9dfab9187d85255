"""Dtype names as configs spell them, and the precision arithmetic is carried out in."""

from __future__ import annotations

import torch

# Config spelling -> torch dtype. float64 is for verification: the parallel-layout parity tests
# run in it, where reduction-order rounding is far below any tolerance worth asserting.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16, "float64": torch.float64}

# The dtype codes of safetensors headers.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                                              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                                              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                                              "BOOL": torch.bool}


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """The dtype for numerically sensitive arithmetic (norms, softmax, optimizer updates):
    half precision is widened to float32, float32 and float64 stay as they are."""
    return torch.promote_types(dtype, torch.float32)


# Rows of a tensor widened at a time where whole-tensor temporaries would cost memory (upcast
# weights in linear layers, optimizer updates of bf16 parameters): 4M elements are 16 MiB in fp32.
UPCAST_BLOCK_ELEMENTS = 1 << 22


# Work done a block at a time to bound its transients (the checkpointed MLP's intermediate
# columns, the head's vocabulary) is split into at most this many blocks: past that, each block's
# own costs (kernel launches on GPUs, thinner matmuls) outweigh the memory a narrower block saves.
MAX_WORK_BLOCKS = 16


def work_blocks(total: int, width: int) -> list[slice]:
    """`range(total)` in slices of `width`, widened to at most `MAX_WORK_BLOCKS` slices."""
    width = max(1, width, -(-total // MAX_WORK_BLOCKS))
    return [slice(start, min(start + width, total)) for start in range(0, total, width)]


def row_blocks(tensor: torch.Tensor, elements: int = 0) -> list:
    """Indices of blocks of whole rows (dim 0) of `tensor`, each at most `elements` (default
    UPCAST_BLOCK_ELEMENTS) elements unless one row is larger; a single index for a 0-d tensor."""
    if tensor.dim() == 0:
        return [...]
    rows = max(1, (elements or UPCAST_BLOCK_ELEMENTS) // max(1, tensor[0].numel()))
    return [slice(start, start + rows) for start in range(0, tensor.shape[0], rows)]
