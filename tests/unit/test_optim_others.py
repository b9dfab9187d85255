"""Adan, Lion and SophiaG against hand-written versions of the published updates,
with two parameter groups (different lr / weight decay), and bit-exact resume."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import reload_through_checkpoint
from torch import nn

from collie.optim import Adan, Lion, SophiaG

torch.set_num_threads(1)

GROUPS = ({"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.02, "weight_decay": 0.0})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(300 + i)
    x, y = torch.randn(5, 4, generator=g), torch.randn(5, 3, generator=g)
    return ((model(x) - y) ** 2).mean()


def _groups(model: nn.Module, **extra: object) -> list[dict]:
    return [{"params": list(model[0].parameters()), **GROUPS[0], **extra},
            {"params": list(model[2].parameters()), **GROUPS[1], **extra}]


def _hyper(model: nn.Module) -> list[tuple[torch.Tensor, dict]]:
    return [(p, GROUPS[0]) for p in model[0].parameters()] + [(p, GROUPS[1]) for p in model[2].parameters()]


def _grads(model: nn.Module, i: int) -> list[torch.Tensor]:
    return list(torch.autograd.grad(_loss(model, i), [p for p, _ in _hyper(model)]))


def _run(model: nn.Module, opt: torch.optim.Optimizer, steps: range, hessian: bool = False) -> None:
    for i in steps:
        if hessian and i % 2 == 0:
            opt.zero_grad()
            _loss(model, 1000 + i).backward()  # stands in for the sampled-label loss
            opt.update_hessian()
        opt.zero_grad()
        _loss(model, i).backward()
        opt.step()


def _assert_close(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("no_prox", [False, True])
def test_adan_matches_paper(no_prox: bool) -> None:
    b1, b2, b3, eps = 0.98, 0.92, 0.99, 1e-8
    ref = _model()
    m, v, n, prev = {}, {}, {}, {}
    for k in (1, 2):
        grads = _grads(ref, k - 1)
        with torch.no_grad():
            for j, ((p, h), g) in enumerate(zip(_hyper(ref), grads)):
                diff = g - prev.get(j, g)
                prev[j] = g
                m[j] = b1 * m.get(j, 0.0) + (1 - b1) * g
                v[j] = b2 * v.get(j, 0.0) + (1 - b2) * diff
                n[j] = b3 * n.get(j, 0.0) + (1 - b3) * (g + b2 * diff) ** 2
                eta = h["lr"] / ((n[j] / (1 - b3**k)).sqrt() + eps)
                step = eta * (m[j] / (1 - b1**k) + b2 * v[j] / (1 - b2**k))
                if no_prox:
                    p.copy_(p * (1 - h["lr"] * h["weight_decay"]) - step)
                else:
                    p.copy_((p - step) / (1 + h["lr"] * h["weight_decay"]))
    model = _model()
    _run(model, Adan(_groups(model), no_prox=no_prox), range(2))
    _assert_close([p for p, _ in _hyper(model)], [p for p, _ in _hyper(ref)])


@pytest.mark.parametrize("betas", [(0.9, 0.99), (0.3, 0.6)])  # the latter makes m visible in the sign
def test_lion_matches_paper(betas: tuple[float, float]) -> None:
    b1, b2 = betas
    ref = _model()
    m = {}
    for i in range(3):
        grads = _grads(ref, i)
        with torch.no_grad():
            for j, ((p, h), g) in enumerate(zip(_hyper(ref), grads)):
                c = b1 * m.get(j, torch.zeros_like(g)) + (1 - b1) * g
                p.copy_(p - h["lr"] * (torch.sign(c) + h["weight_decay"] * p))
                m[j] = b2 * m.get(j, torch.zeros_like(g)) + (1 - b2) * g
    model = _model()
    _run(model, Lion(_groups(model), betas=betas), range(3))
    _assert_close([p for p, _ in _hyper(model)], [p for p, _ in _hyper(ref)])


def test_sophiag_matches_paper_and_fills_hessian() -> None:
    b1, b2, rho, eps, bs = 0.965, 0.99, 0.04, 1e-15, 5120
    ref = _model()
    m, hess = {}, {}
    for i in range(2):
        if i % 2 == 0:
            for j, g in enumerate(_grads(ref, 1000 + i)):
                hess[j] = b2 * hess.get(j, 0.0) + (1 - b2) * g * g
        grads = _grads(ref, i)
        with torch.no_grad():
            for j, ((p, h), g) in enumerate(zip(_hyper(ref), grads)):
                m[j] = b1 * m.get(j, 0.0) + (1 - b1) * g
                ratio = torch.clamp(m[j] / (rho * bs * hess[j] + eps), -1, 1)
                p.copy_(p * (1 - h["lr"] * h["weight_decay"]) - h["lr"] * ratio)
    model = _model()
    opt = SophiaG(_groups(model), hessian_update_interval=2)
    assert opt.hessian_update_interval == 2
    _run(model, opt, range(2), hessian=True)
    _assert_close([p for p, _ in _hyper(model)], [p for p, _ in _hyper(ref)])
    assert all(opt.state[p]["hessian"].abs().sum() > 0 for p in model.parameters())


MAKERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "adan": lambda m: Adan(_groups(m)),
    "lion": lambda m: Lion(_groups(m)),
    "sophiag": lambda m: SophiaG(_groups(m)),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_state_dict_round_trip_is_bit_exact(name: str) -> None:
    make, hessian = MAKERS[name], name == "sophiag"
    straight = _model()
    _run(straight, make(straight), range(4), hessian)

    first = _model()
    opt1 = make(first)
    _run(first, opt1, range(2), hessian)
    resumed = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt2, _ = reload_through_checkpoint(first, opt1, resumed, make)
    _run(resumed, opt2, range(2, 4), hessian)

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
