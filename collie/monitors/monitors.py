"""Monitors turn one step's raw figures into named columns (what `metrics.csv` and the sinks show).

Pass the ones you want to the Trainer; `default_monitors` is all of them.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Optional

import torch

# Dense bf16 peak TFLOP/s per device, for MFU. CPUs have no meaningful entry: MFU is then omitted.
_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0,
                "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


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
    def __init__(self, config=None) -> None:
        self.config = config

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
    """Model FLOPs utilisation: 6·N (+ attention) FLOPs per token against the device's bf16 peak."""

    def step_columns(self, stats: StepStats) -> dict:
        peak = peak_flops(stats.device)
        if peak is None or stats.flops_per_token is None:
            return {}
        achieved = stats.flops_per_token * stats.tokens / max(stats.step_time_s, 1e-9) / stats.num_devices
        return {"mfu": achieved / peak}


class MemoryMonitor(Monitor):
    """Peak memory in GiB: CUDA max allocated on GPUs, the process's peak RSS on CPU."""

    def step_columns(self, stats: StepStats) -> dict:
        if stats.device.type == "cuda":
            return {"mem_gib": torch.cuda.max_memory_allocated(stats.device) / 1024**3}
        return {"mem_gib": peak_rss_gib()}


class LossMonitor(Monitor):
    def step_columns(self, stats: StepStats) -> dict:
        return {"loss": stats.loss}


class LRMonitor(Monitor):
    def step_columns(self, stats: StepStats) -> dict:
        return {"lr": stats.lr}


class EvalMonitor(Monitor):
    def eval_columns(self, results: dict) -> dict:
        return {key: value for key, value in results.items() if isinstance(value, (int, float))}


def default_monitors(config=None) -> list[Monitor]:
    return [LossMonitor(config), LRMonitor(config), TGSMonitor(config), StepTimeMonitor(config),
            MFUMonitor(config), MemoryMonitor(config), EvalMonitor(config)]


def peak_rss_gib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024**3 if sys.platform == "darwin" else peak / 1024**2


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in _PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def llama_flops_per_token(model_config, seq_len: int, trainable_params: int) -> float:
    """Training FLOPs per token: 6 per parameter plus the attention score/value matmuls."""
    layers, hidden = model_config.num_hidden_layers, model_config.hidden_size
    return 6.0 * trainable_params + 12.0 * layers * hidden * seq_len
