"""Preemption: SIGTERM or SIGUSR1 (what Slurm sends before it kills or requeues a job, see
`#SBATCH --signal`; what torchrun forwards when it is stopped) asks the Trainer to finish the
current step, write a checkpoint and return, so the same command resumes.

The handler only records the signal; ranks agree after every step (a one-number all-reduce),
so all of them stop after the same step even when only some received it.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict = {}

    def __enter__(self) -> "PreemptionWatch":
        # Python runs signal handlers in the main thread only; elsewhere nothing is installed.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        self.received = signum

    def agreed_signal(self, device: torch.device) -> Optional[str]:
        """The name of a signal any rank received (every rank calls this after each step)."""
        received = self.received
        if dist.is_initialized():
            value = torch.tensor([float(received)], device=device)
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
            received = int(value.item())
        return signal.Signals(received).name if received else None
