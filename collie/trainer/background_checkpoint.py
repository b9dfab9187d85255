"""Asynchronous checkpoints (`checkpoint_async: true`): DCP stages the state in host memory and
writes it from a background thread while training goes on; the step pays only for staging.

The checkpoint is written under its staging name (`.tmp`, or its own name in an object store);
only when the write has completed does rank 0 give it its name and move `latest` to it, so a
kill during the background write leaves `latest` on the previous checkpoint. The background
collectives run in a process group of their own (gloo), so they never interleave with the
training step's.
"""

from __future__ import annotations

import inspect
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from collie import storage
from collie.trainer import checkpoint

log = logging.getLogger("collie")


@dataclass
class _InFlight:
    future: Future
    tmp: str
    path: str
    mark_latest: bool
    max_to_keep: int


class BackgroundWriter:
    def __init__(self) -> None:
        # Created by every rank at the same point (a collective call).
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.in_flight: Optional[_InFlight] = None

    def start(self, state: dict, tmp: str, path: str, mark_latest: bool, max_to_keep: int) -> None:
        if self.group is None:
            checkpoint.quiet_single_process_warning()
        if self.group is None and "no_dist" not in inspect.signature(dcp.async_save).parameters:
            # This PyTorch's async_save needs a process group: one process writes synchronously.
            dcp.save(state, checkpoint_id=tmp, no_dist=True)
            future: Future = Future()
            future.set_result(None)
        else:
            kwargs = {"process_group": self.group} if self.group is not None else {"no_dist": True}
            future = dcp.async_save(state, checkpoint_id=tmp, **kwargs)
            future = getattr(future, "upload_completion", future)  # newer PyTorch returns a response object
        self.in_flight = _InFlight(future, tmp, path, mark_latest, max_to_keep)

    def poll(self) -> None:
        """Complete the checkpoint in flight if its write has finished (never waits)."""
        if self.in_flight is not None and self.in_flight.future.done():
            self._complete()

    def wait(self) -> None:
        """Complete the checkpoint in flight, waiting for its write."""
        if self.in_flight is not None:
            self._complete()

    def _complete(self) -> None:
        job, self.in_flight = self.in_flight, None
        rank = dist.get_rank() if dist.is_initialized() else 0
        try:
            job.future.result()
        except (OSError, RuntimeError, CheckpointException) as e:
            if not checkpoint.is_storage_error(e):
                raise
            # DCP gathers every rank's write result: all ranks see the failure together.
            if rank == 0:
                storage.remove_tree(job.tmp)
            raise checkpoint.write_error(job.path, e) from e
        if rank == 0:
            # Rank 0 coordinates the write: its future completes only after every rank's data is on disk.
            checkpoint.finalize(job.tmp, job.path, job.mark_latest, job.max_to_keep)
            log.info("checkpoint %s written in the background", job.path)
