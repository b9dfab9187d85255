"""Monitors of the machine around the training step: network and disk traffic, CPU memory.

Each reads psutil's counters when its row is made and reports what moved since the previous
row (the step, and whatever ran between two steps: an evaluation, a checkpoint being written).
The counters are the machine's (a network interface's, a disk's), as CoLLiE's monitors read
them: other processes' traffic is counted too.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import psutil
import torch

from collie.monitors.memory import GIB
from collie.monitors.monitors import Monitor, StepStats


def _pick(counters, name: Optional[str], what: str):
    """The counters of one interface or disk (`name`), or of all when `name` is None."""
    if name is None:
        return counters
    if name not in counters:
        raise ValueError(f"{what} {name!r}: not one of {', '.join(sorted(counters))}")
    return counters[name]


class _CounterMonitor(Monitor):
    """Turns two byte counters read now and at the previous row into per-interval bytes and
    bytes per second, under the columns `names`."""

    def __init__(self, config, read: Callable[[], NamedTuple], fields: tuple[str, str], names: tuple[str, str]) -> None:
        super().__init__(config)
        self._read = read
        self._fields = fields
        self._names = names
        self._last: Optional[tuple[float, NamedTuple]] = None

    def start(self, device: torch.device) -> None:
        self._last = (time.monotonic(), self._read())

    def step_columns(self, stats: StepStats) -> dict:
        if self._last is None:  # used outside a Trainer: the first row covers its own step only
            self.start(stats.device)
        (then, before), now, after = self._last, time.monotonic(), self._read()
        self._last = (now, after)
        seconds = max(now - then, 1e-9)
        columns = {}
        for field, name in zip(self._fields, self._names):
            moved = getattr(after, field) - getattr(before, field)
            columns[f"{name}_bytes"] = moved
            columns[f"{name}_bytes_per_s"] = moved / seconds
        return columns


class NetworkIOMonitor(_CounterMonitor):
    """Bytes sent and received over the network (`interface`, or all of them, loopback
    included) since the previous row, and per second: `net_sent_*`, `net_recv_*`.
    CoLLiE subtracted a rate measured over 5 idle seconds at construction; collie reports the
    traffic as it is."""

    def __init__(self, config=None, interface: Optional[str] = None) -> None:
        self.interface = interface
        read = lambda: _pick(psutil.net_io_counters(pernic=interface is not None, nowrap=True),  # noqa: E731
                             interface, "interface")
        read()  # an unknown interface fails here, not at the first step
        super().__init__(config, read, ("bytes_sent", "bytes_recv"), ("net_sent", "net_recv"))


class DiskIOMonitor(_CounterMonitor):
    """Bytes read from and written to disk (`disk`, or all of them) since the previous row,
    and per second: `disk_read_*`, `disk_write_*`."""

    def __init__(self, config=None, disk: Optional[str] = None) -> None:
        self.disk = disk
        read = lambda: _pick(psutil.disk_io_counters(perdisk=disk is not None, nowrap=True), disk, "disk")  # noqa: E731
        if read() is None:
            raise RuntimeError("DiskIOMonitor: this machine reports no disk counters (psutil.disk_io_counters)")
        super().__init__(config, read, ("read_bytes", "write_bytes"), ("disk_read", "disk_write"))


class CPUMemoryMonitor(Monitor):
    """CPU memory in GiB at the end of the step: `cpu_mem_used_gib`, the machine's memory in
    use (CoLLiE's figure), and `cpu_mem_rss_gib`, this process's resident memory."""

    def step_columns(self, stats: StepStats) -> dict:
        return {"cpu_mem_used_gib": psutil.virtual_memory().used / GIB,
                "cpu_mem_rss_gib": psutil.Process().memory_info().rss / GIB}
