"""The memory a training process holds, and its peaks.

Between log lines, on CPU, that is the process's anonymous resident memory (`RssAnon` in
/proc/self/status): weights, gradients, optimizer state, activations. It leaves out file
pages — shared libraries, and any memory-mapped file — which the OS can drop and re-read.
Linux keeps no high-water mark of the anonymous part, so a background thread samples it. On
CUDA it is `torch.cuda.max_memory_allocated`.

The run's peak is the process's since it began, loading the model included (what a machine
must have, however the weights got there): on CPU the OS's own peak resident memory, on CUDA
the allocator's peak, never reset.
"""

from __future__ import annotations

import resource
import sys
import threading
from typing import Optional

import torch

GIB = 1024**3


def resident_memory() -> dict[str, int]:
    """Bytes of anonymous and file-backed resident memory of this process (Linux)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def has_proc_status() -> bool:
    return sys.platform.startswith("linux")


def os_peak_rss() -> int:
    """The OS's peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Peak memory of this process since the last `interval_peak()` call, and of the run.

    CPU: a daemon thread reads the anonymous resident memory every `interval_s` (the sampling
    can miss a spike shorter than that; training steps are far longer). CUDA: the allocator's
    own peak, reset at each interval.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self._interval_peak = 0
        self._sampled_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        # CUDA's peak is not reset here: the first interval and the run include loading.
        if self.device.type != "cuda" and has_proc_status() and self._thread is None:
            self._stop.clear()
            self._sample()
            self._thread = threading.Thread(target=self._run, name="collie-memory-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def interval_peak(self, reset: bool = True) -> int:
        """Peak bytes since the previous reset (or `start()`)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            if reset:
                torch.cuda.reset_peak_memory_stats(self.device)
            self._sampled_peak = max(self._sampled_peak, peak)
            return peak
        if not has_proc_status():  # no anonymous figure: the OS's peak RSS
            self._sampled_peak = os_peak_rss()
            return self._sampled_peak
        self._sample()
        with self._lock:
            peak = self._interval_peak
            if reset:
                self._interval_peak = resident_memory()["RssAnon"]
            return peak

    @property
    def sampled_peak(self) -> int:
        """Peak bytes sampled since `start()`: anonymous memory on CPU."""
        return self._sampled_peak

    @property
    def run_peak(self) -> int:
        """Peak bytes of the process: the OS's peak resident memory on CPU, at least what was
        sampled (see the module's docstring)."""
        if self.device.type == "cuda":
            return self._sampled_peak
        return max(self._sampled_peak, os_peak_rss())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        now = resident_memory()["RssAnon"]
        with self._lock:
            self._interval_peak = max(self._interval_peak, now)
            self._sampled_peak = max(self._sampled_peak, now)
