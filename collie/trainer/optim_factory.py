"""Optimizers and LR schedules from config."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from collie import optim
from collie.config import ConfigError, OptimizerConfig, SchedulerConfig


def _adam(cls: type) -> Callable:
    def build(model: torch.nn.Module, params: list, cfg: OptimizerConfig) -> torch.optim.Optimizer:
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   **adam_implementation(params))
    return build


def _in_backward(cls: type) -> Callable:
    def build(model: torch.nn.Module, params: list, cfg: OptimizerConfig) -> torch.optim.Optimizer:
        return cls(model, lr=cfg.lr, clip_grad_norm=cfg.clip_grad_norm, clip_grad_value=cfg.clip_grad_value,
                   weight_decay=cfg.weight_decay)
    return build


# `optimizer.name` → (the class, how it is built from the model, its trainable parameters and
# the config section). Its names are `collie.config.OPTIMIZERS` (a test holds them equal).
OPTIMIZER_TABLE: dict[str, tuple[type, Callable]] = {
    "adamw": (torch.optim.AdamW, _adam(torch.optim.AdamW)),
    "adam": (torch.optim.Adam, _adam(torch.optim.Adam)),
    "sgd": (torch.optim.SGD, lambda model, params, cfg: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)),
    "lomo": (optim.Lomo, _in_backward(optim.Lomo)),
    "adalomo": (optim.AdaLomo, _in_backward(optim.AdaLomo)),
    "adan": (optim.Adan, lambda model, params, cfg: optim.Adan(
        params, lr=cfg.lr, betas=tuple(cfg.betas) if len(cfg.betas) == 3 else (0.98, 0.92, 0.99), eps=cfg.eps,
        weight_decay=cfg.weight_decay)),
    "lion": (optim.Lion, lambda model, params, cfg: optim.Lion(
        params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), weight_decay=cfg.weight_decay)),
    "sophiag": (optim.SophiaG, lambda model, params, cfg: optim.SophiaG(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay)),
}


def _entry(name: str) -> tuple[type, Callable]:
    if name not in OPTIMIZER_TABLE:
        raise ConfigError(f"optimizer.name: {name!r} is not one of {', '.join(OPTIMIZER_TABLE)}")
    return OPTIMIZER_TABLE[name]


def optimizer_class(name: str) -> type:
    """The class `optimizer.name` builds."""
    return _entry(name)[0]


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return _entry(cfg.name)[1](model, [p for p in model.parameters() if p.requires_grad], cfg)


def adam_implementation(params: list[torch.Tensor]) -> dict:
    """The fused (one kernel for all parameters) Adam where every parameter is a plain tensor on
    one kind of device that has the kernel (CUDA; CPUs since PyTorch 2.4, below collie's floor):
    it makes no temporaries, where the default (foreach) makes several per parameter each step
    (on a CPU with collie's fixed mmap threshold, each a fresh mapping to fault in: 0.41 s
    against 0.06 s a step for 110M parameters). PyTorch's default elsewhere: for DTensor
    parameters (tensor parallel, FSDP), whose fused kernel support depends on the version."""
    devices = {p.device.type for p in params}
    fused = len(devices) == 1 and devices <= {"cuda", "cpu"} and not any(isinstance(p, DTensor) for p in params)
    return {"fused": True} if fused else {}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, total_steps: int) -> LambdaLR:
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg.name, warmup, total_steps, cfg.min_lr_ratio))


def lr_factor(step: int, name: str, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warmup, then constant/linear/cosine."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if name == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay

