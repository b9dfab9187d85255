"""Optimizers and LR schedules from config."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from collie.config import OptimizerConfig, SchedulerConfig


def updates_in_backward(optimizer) -> bool:
    """Whether an optimizer (or optimizer class) updates parameters inside backward (LOMO,
    AdaLomo): the Trainer must know before it parallelizes the model, since such optimizers
    average data-parallel gradients themselves."""
    return bool(getattr(optimizer, "updates_in_backward", False))


def optimizer_class(name: str) -> type:
    """The class `optimizer.name` builds."""
    from collie import optim

    classes = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "lomo": optim.Lomo, "adalomo": optim.AdaLomo, "adan": optim.Adan, "lion": optim.Lion,
               "sophiag": optim.SophiaG}
    if name not in classes:
        raise ValueError(f"optimizer.name: unknown optimizer {name!r}")
    return classes[name]


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    name = cfg.name
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   **adam_implementation(params))
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    from collie import optim

    if name == "lomo":
        return optim.Lomo(model, lr=cfg.lr, clip_grad_norm=cfg.clip_grad_norm,
                          clip_grad_value=cfg.clip_grad_value, weight_decay=cfg.weight_decay)
    if name == "adalomo":
        return optim.AdaLomo(model, lr=cfg.lr, clip_grad_norm=cfg.clip_grad_norm,
                             clip_grad_value=cfg.clip_grad_value, weight_decay=cfg.weight_decay)
    if name == "adan":
        betas = tuple(cfg.betas) if len(cfg.betas) == 3 else (0.98, 0.92, 0.99)
        return optim.Adan(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "lion":
        return optim.Lion(params, lr=cfg.lr, betas=tuple(cfg.betas[:2]), weight_decay=cfg.weight_decay)
    if name == "sophiag":
        return optim.SophiaG(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer.name: unknown optimizer {name!r}")


def adam_implementation(params: list[torch.Tensor]) -> dict:
    """The fused (one kernel for all parameters) Adam on GPUs, where every parameter is a plain
    CUDA tensor; PyTorch's default (foreach) elsewhere: on CPUs, and for DTensor parameters
    (tensor parallel, FSDP), whose fused kernel support depends on the PyTorch version."""
    from torch.distributed.tensor import DTensor

    fused = bool(params) and all(p.device.type == "cuda" and not isinstance(p, DTensor) for p in params)
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
