"""AdaLomo must follow the published update rule step by step, also under gradient
accumulation, and resume bit-exactly from a checkpoint."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from helpers import reload_through_checkpoint
from torch import nn

from collie.optim import AdaLomo

torch.set_num_threads(1)


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + i)
    x, y = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    dtype = next(model.parameters()).dtype
    return ((model(x.to(dtype)).float() - y) ** 2).mean() * 4.0


def _reference_adalomo(
    model: nn.Module,
    step_loss: Callable[[nn.Module, int], torch.Tensor],
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
) -> list[list[torch.Tensor]]:
    """The AdaLomo paper's update written out independently (Adafactor with row/column
    *sums* and V = R C^T / sum(R)); returns the parameters after every step."""
    eps1, eps2, d, decay_rate = 1e-30, 1e-3, 1.0, -0.8
    params = list(model.parameters())
    row, col, full = {}, {}, {}
    history = []
    for t in range(1, steps + 1):
        grads = [g.detach().clone() for g in torch.autograd.grad(step_loss(model, t - 1), params)]
        coef = 1.0
        if clip_grad_norm is not None:
            total = math.sqrt(sum(float((g * g).sum()) for g in grads))
            coef = min(1.0, clip_grad_norm / (total + 1e-6))
        beta = 1.0 - t**decay_rate
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads)):
                if clip_grad_value is not None:
                    g = g.clamp(-clip_grad_value, clip_grad_value)
                g = g * coef
                sq = g * g + eps1
                if p.dim() == 2:
                    row[k] = beta * row.get(k, 0.0) + (1 - beta) * sq.sum(dim=1)
                    col[k] = beta * col.get(k, 0.0) + (1 - beta) * sq.sum(dim=0)
                    v_hat = torch.outer(row[k], col[k]) / row[k].sum()
                else:
                    full[k] = beta * full.get(k, 0.0) + (1 - beta) * sq
                    v_hat = full[k]
                u = g / v_hat.sqrt()
                u = u / max(1.0, float(u.pow(2).mean().sqrt()) / d)
                alpha = lr * max(eps2, float(p.pow(2).mean().sqrt()))
                p.copy_(p * (1 - alpha * weight_decay) - alpha * u)
        history.append([p.detach().clone() for p in params])
    return history


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_decay": 0.1},
        {"clip_grad_norm": 0.3, "clip_grad_value": 0.1, "weight_decay": 0.01},
    ],
)
def test_adalomo_matches_published_update_per_step(kwargs: dict) -> None:
    expected = _reference_adalomo(_model(), _loss, 3, lr=0.05, **kwargs)
    model = _model()
    opt = AdaLomo(model, lr=0.05, **kwargs)
    for i in range(3):
        opt.backward(_loss(model, i))
        assert all(p.grad is None for p in model.parameters())
        for p, q in zip(model.parameters(), expected[i]):
            assert torch.allclose(p, q, atol=1e-6, rtol=0), (i, p.shape)
    assert set(opt.state_dict()["state"]["0.weight"]) == {"exp_avg_sq_row", "exp_avg_sq_col"}
    assert set(opt.state_dict()["state"]["0.bias"]) == {"exp_avg_sq"}


def test_adalomo_gradient_accumulation_matches_summed_loss() -> None:
    def summed(m: nn.Module, i: int) -> torch.Tensor:
        return _loss(m, 2 * i) + _loss(m, 2 * i + 1)

    expected = _reference_adalomo(_model(), summed, 2, lr=0.05, clip_grad_norm=0.3)
    model = _model()
    opt = AdaLomo(model, lr=0.05, clip_grad_norm=0.3)
    for i in range(2):
        opt.backward(_loss(model, 2 * i), last_microbatch=False)
        opt.backward(_loss(model, 2 * i + 1), last_microbatch=True)
        for p, q in zip(model.parameters(), expected[i]):
            assert torch.allclose(p, q, atol=1e-6, rtol=0), (i, p.shape)


def test_lambda_lr_scheduler_drives_adalomo_lr() -> None:
    model = _model()
    opt = AdaLomo(model, lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0 if s >= 1 else 1.0)
    opt.backward(_loss(model, 0))
    opt.step()
    sched.step()
    after_first = [p.detach().clone() for p in model.parameters()]
    opt.backward(_loss(model, 1))  # lr is now 0: nothing may move
    for p, q in zip(model.parameters(), after_first):
        assert torch.equal(p, q)


def _train(model: nn.Module, opt: AdaLomo, steps: range) -> None:
    for i in steps:
        opt.backward(_loss(model, i))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adalomo_state_dict_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    def make(m: nn.Module) -> AdaLomo:
        return AdaLomo(m, lr=0.05, clip_grad_norm=0.5, weight_decay=0.01)

    straight = _model(dtype)
    _train(straight, make(straight), range(4))

    first = _model(dtype)
    opt1 = make(first)
    _train(first, opt1, range(2))
    resumed = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    opt2, ckpt = reload_through_checkpoint(first, opt1, resumed, make)
    assert ckpt["optim"]["step_count"] == 2
    assert opt2.state[resumed[0].weight]["exp_avg_sq_row"].dtype == torch.float32
    _train(resumed, opt2, range(2, 4))

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
