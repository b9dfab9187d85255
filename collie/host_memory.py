"""Give freed host memory back to the OS.

glibc's malloc serves a large block from its heap instead of a fresh mapping once a block of
that size has been freed (its mmap threshold grows with each free, up to 32 MiB), and freed
heap memory stays resident while anything above it in the heap lives. Training allocates and
frees activation and gradient buffers of a few MiB all the time, so on CPUs the resident
memory creeps up by hundreds of MiB per step (measured: 1B LLaMA LoRA step 5.04 GiB with the
default, 4.14 GiB with a fixed threshold). A fixed 1 MiB threshold maps every larger block
on its own and unmaps it when freed. A user's own MALLOC_MMAP_THRESHOLD_ wins; other C
libraries (musl, macOS) are left alone.

A server is the opposite case: it allocates buffers of the same few sizes at every decoding
step and has nothing to creep, so there every block mapped afresh is only page faults
(measured: 2 MiB gathers of cached keys 0.7 ms each instead of 0.05 ms). `reuse_freed_memory`
keeps blocks up to glibc's own ceiling in the heap for such a process.

A training run sits between the two (`for_training`). The creep comes from recomputation:
with activation checkpointing, backward remakes each block's activations while longer-lived
buffers (the saved block inputs, gradients) sit between them in the heap, so reused memory
fragments (measured +0.8 GiB on the 1B LoRA step, whatever the trimming), and a run that
checkpoints, or updates in backward (LOMO, AdaLomo), has chosen memory over speed: it keeps
the fixed threshold. Any other run keeps its step's buffers in the heap: faulting each in
afresh cost a 110M AdamW step about 15% of its time.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
THRESHOLD_BYTES = 1 << 20
DEFAULT_TRIM_BYTES = 128 << 10  # glibc's own starting trim threshold
# Where glibc's own dynamic thresholds end up (64-bit): blocks up to 32 MiB from the heap, and
# the heap's top given back only past twice that.
REUSE_THRESHOLD_BYTES = 32 << 20
_set: Optional[int] = None  # the mmap threshold this module set


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process (once, and not after
    `reuse_freed_memory`); whether it is in effect."""
    if _set is not None:
        return _set == THRESHOLD_BYTES
    return _mallopt({_M_MMAP_THRESHOLD: THRESHOLD_BYTES})


def reuse_freed_memory() -> bool:
    """Serve blocks up to 32 MiB from the heap, and keep its freed top, for the rest of this
    process (after loading, which sets the threshold above); whether it is in effect."""
    if _set == REUSE_THRESHOLD_BYTES:
        return True
    return _mallopt({_M_MMAP_THRESHOLD: REUSE_THRESHOLD_BYTES, _M_TRIM_THRESHOLD: 2 * REUSE_THRESHOLD_BYTES})


def for_training(saves_memory: bool) -> bool:
    """The policy of a training run about to start (after loading, which set the fixed
    threshold): the fixed 1 MiB threshold if the run `saves_memory` (checkpointing, updates in
    backward), else `reuse_freed_memory`; whether it is in effect. A run that saves memory first
    gives back the free pages inside the heap: what loading or building the model freed there
    stays resident while anything above it lives (measured: 80 MiB in some builds of the 1B
    model, none in others, after the same steps)."""
    if not saves_memory:
        return reuse_freed_memory()
    in_effect = _set == THRESHOLD_BYTES or _mallopt({_M_MMAP_THRESHOLD: THRESHOLD_BYTES,
                                                    _M_TRIM_THRESHOLD: DEFAULT_TRIM_BYTES})
    if in_effect:
        _libc().malloc_trim(0)
    return in_effect


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def _mallopt(settings: dict[int, int]) -> bool:
    global _set
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = _libc()
        in_effect = all(libc.mallopt(parameter, value) for parameter, value in settings.items())
    except (OSError, AttributeError):  # not glibc
        return False
    if in_effect:
        _set = settings[_M_MMAP_THRESHOLD]
    return in_effect
