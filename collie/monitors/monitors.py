"""Monitors turn one step's raw figures into named columns (what `metrics.csv` and the sinks show).

Pass the ones you want to the Trainer; `default_monitors` is all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from collie.distributed.parallelize import compute_dtype
from collie.forward_context import autocast_dtype
from collie.models.base import param_dtype
from collie.monitors.memory import GIB, PeakMemory

# Dense peak TFLOP/s per device, for MFU: (half precision on tensor cores, plain fp32). CPUs
# have no meaningful entry: MFU is then omitted.
_PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L40S": (362.0, 91.6),
                "A10": (125.0, 31.2), "RTX 4090": (165.0, 82.6), "RTX 3090": (71.0, 35.6), "V100": (125.0, 15.7)}


@dataclass
class StepStats:
    step: int
    epoch: int
    loss: float
    lr: float
    tokens: int           # real (non-padding) tokens of the whole global batch
    step_time_s: float
    num_devices: int
    flops_per_token: Optional[float]
    device: torch.device


class Monitor:
    """Takes the run's CollieConfig (CoLLiE's signature); monitors that depend on a setting
    read it from there, the others need nothing from it."""

    def __init__(self, config=None) -> None:
        self.config = config

    def start(self, device: torch.device) -> None:
        """Training begins (on `device`)."""

    def stop(self) -> None:
        """Training ended."""

    def step_columns(self, stats: StepStats) -> dict:
        return {}

    def eval_columns(self, results: dict) -> dict:
        return {}


class StepTimeMonitor(Monitor):
    def step_columns(self, stats: StepStats) -> dict:
        return {"step_time_s": stats.step_time_s}


class TGSMonitor(Monitor):
    """Tokens per device per second; counts real tokens only, padding excluded."""

    def step_columns(self, stats: StepStats) -> dict:
        return {"tokens": stats.tokens, "tgs": stats.tokens / max(stats.step_time_s, 1e-9) / stats.num_devices}


class MFUMonitor(Monitor):
    """Model FLOPs utilisation: 6·N (+ attention) FLOPs per token against the device's peak for
    the precision the matmuls run in, which the config decides (bf16/fp16 autocast or storage:
    the tensor-core peak; fp32: the TF32 peak when PyTorch allows TF32, else plain fp32).
    Without a config the half-precision peak is assumed."""

    def step_columns(self, stats: StepStats) -> dict:
        peak = peak_flops(stats.device, self._matmul_dtype(stats.device))
        if peak is None or stats.flops_per_token is None:
            return {}
        achieved = stats.flops_per_token * stats.tokens / max(stats.step_time_s, 1e-9) / stats.num_devices
        return {"mfu": achieved / peak}

    def _matmul_dtype(self, device: torch.device) -> torch.dtype:
        if self.config is None:
            return torch.bfloat16
        storage, compute = param_dtype(self.config), self.config.compute
        return autocast_dtype(compute, device) or compute_dtype(compute, device, storage) or storage


class MemoryMonitor(Monitor):
    """The memory the process holds, in GiB — anonymous resident memory on CPU (weights,
    gradients, optimizer state, activations; not the pages of libraries or mapped files),
    allocated memory on CUDA (see `collie.monitors.memory`):

    - `mem_peak_gib`: the peak since the last log line (`log_every_n_steps` from the config),
    - `mem_run_peak_gib`: the process's peak so far, loading the model included (on CPU the
      OS's peak resident memory).
    """

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self._peak: Optional[PeakMemory] = None

    def start(self, device: torch.device) -> None:
        self._peak = PeakMemory(device)
        self._peak.start()

    def stop(self) -> None:
        if self._peak is not None:
            self._peak.stop()

    def step_columns(self, stats: StepStats) -> dict:
        if self._peak is None:  # used outside a Trainer
            self.start(stats.device)
        every = self.config.log_every_n_steps if self.config is not None else 1
        peak = self._peak.interval_peak(reset=stats.step % every == 0)
        return {"mem_peak_gib": peak / GIB, "mem_run_peak_gib": self._peak.run_peak / GIB}


class LossMonitor(Monitor):
    def step_columns(self, stats: StepStats) -> dict:
        return {"loss": stats.loss}


class LRMonitor(Monitor):
    def step_columns(self, stats: StepStats) -> dict:
        return {"lr": stats.lr}


class EvalMonitor(Monitor):
    def eval_columns(self, results: dict) -> dict:
        return {key: value for key, value in results.items() if isinstance(value, (int, float))}


class MonitorGroup(Monitor):
    """Several monitors as one: their columns merged, in order (CoLLiE's `_MultiMonitors`)."""

    def __init__(self, monitors: list[Monitor]) -> None:
        super().__init__(None)
        self.monitors = list(monitors)

    def start(self, device: torch.device) -> None:
        for monitor in self.monitors:
            monitor.start(device)

    def stop(self) -> None:
        for monitor in self.monitors:
            monitor.stop()

    def step_columns(self, stats: StepStats) -> dict:
        return {key: value for monitor in self.monitors for key, value in monitor.step_columns(stats).items()}

    def eval_columns(self, results: dict) -> dict:
        return {key: value for monitor in self.monitors for key, value in monitor.eval_columns(results).items()}


def default_monitors(config=None) -> list[Monitor]:
    return [LossMonitor(config), LRMonitor(config), TGSMonitor(config), StepTimeMonitor(config),
            MFUMonitor(config), MemoryMonitor(config), EvalMonitor(config)]


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Optional[float]:
    """Dense peak FLOP/s of a GPU for matmuls in `dtype` (None for CPUs and unknown GPUs)."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device), dtype, torch.backends.cuda.matmul.allow_tf32)


def peak_flops_of(device_name: str, dtype: torch.dtype, allow_tf32: bool) -> Optional[float]:
    for key, (half, fp32) in _PEAK_TFLOPS.items():
        if key not in device_name:
            continue
        if dtype in (torch.bfloat16, torch.float16):
            return half * 1e12
        if dtype == torch.float32:
            # TF32 runs at half the bf16 rate on the GPUs that have it (Ampere and later).
            return (half / 2 if allow_tf32 and key != "V100" else fp32) * 1e12
        return None  # float64: no peak worth quoting
    return None
