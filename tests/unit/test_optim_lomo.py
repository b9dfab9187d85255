"""Lomo must be SGD fused into backward: same numbers as torch.optim.SGD, plus the
trainer protocol (gradient accumulation, LR schedulers), fp16 loss scaling and
bit-exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import reload_through_checkpoint
from torch import nn

from collie.optim import AdaLomo, Lomo

torch.set_num_threads(1)


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _batch(i: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(5, 4, generator=g).to(dtype), torch.randn(5, 3, generator=g)


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    x, y = _batch(i, next(model.parameters()).dtype)
    return ((model(x).float() - y) ** 2).mean() * 4.0


def _sgd_step(model: nn.Module, loss: torch.Tensor, lr: float, wd: float = 0.0,
              clip_norm: float | None = None, clip_value: float | None = None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    opt.zero_grad()
    loss.backward()
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


def _assert_close(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=atol, rtol=0), name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_decay": 0.1},
        {"clip_grad_norm": 0.2},  # well below the actual norm, so clipping binds
        {"clip_grad_value": 0.05, "weight_decay": 0.1},
    ],
)
def test_lomo_steps_equal_sgd(kwargs: dict) -> None:
    ref, model = _model(), _model()
    opt = Lomo(model, lr=0.1, **kwargs)
    for i in range(2):
        _sgd_step(ref, _loss(ref, i), 0.1, kwargs.get("weight_decay", 0.0),
                  kwargs.get("clip_grad_norm"), kwargs.get("clip_grad_value"))
        before = copy.deepcopy(model)
        opt.backward(_loss(model, i))
        assert all(p.grad is None for p in model.parameters()), "gradients must be freed"
        _assert_close(ref, model)
        assert not torch.allclose(before[0].weight, model[0].weight)


def test_lomo_reference_api_grad_norm_then_fused_backward() -> None:
    ref, model = _model(), _model()
    opt = Lomo(model, lr=0.5, clip_grad_norm=0.2)
    _sgd_step(ref, _loss(ref, 0), lr=0.05, clip_norm=0.2)
    loss = _loss(model, 0)
    opt.grad_norm(loss)
    _assert_close(_model(), model, atol=0.0)  # the norm pass alone must not update
    opt.fused_backward(loss, 0.05)  # explicit lr wins over param_groups
    _assert_close(ref, model)


def test_lomo_gradient_accumulation_equals_one_step_on_summed_loss() -> None:
    ref, model = _model(), _model()
    opt = Lomo(model, lr=0.1, clip_grad_norm=0.3, weight_decay=0.1)
    _sgd_step(ref, _loss(ref, 0) + _loss(ref, 1), 0.1, wd=0.1, clip_norm=0.3)

    opt.backward(_loss(model, 0), last_microbatch=False)
    opt.step()
    opt.zero_grad()  # must not destroy the accumulated gradient
    _assert_close(_model(), model, atol=0.0)  # no update before the window ends
    assert all(p.grad is not None for p in model.parameters())
    opt.backward(_loss(model, 1), last_microbatch=True)
    assert all(p.grad is None for p in model.parameters())
    _assert_close(ref, model)


def test_lambda_lr_scheduler_drives_lomo_lr() -> None:
    ref, model = _model(), _model()
    opt = Lomo(model, lr=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.25**s)
    _sgd_step(ref, _loss(ref, 0), 0.2)
    opt.backward(_loss(model, 0))
    opt.step()
    sched.step()
    _assert_close(ref, model)
    # second step with gradient accumulation: the accumulated path must see the new lr too
    _sgd_step(ref, _loss(ref, 1) + _loss(ref, 2), 0.2 * 0.25)
    opt.backward(_loss(model, 1), last_microbatch=False)
    opt.backward(_loss(model, 2), last_microbatch=True)
    opt.step()
    sched.step()
    _assert_close(ref, model)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 0.25**2)


@pytest.mark.parametrize("make", [
    lambda m: Lomo(m, lr=0.05, loss_scale_args={"init_scale": 2**10, "scale_window": 2}),
    lambda m: AdaLomo(m, lr=0.05, loss_scale=2**10),
])
def test_fp16_overflow_skips_whole_step_and_reduces_scale(make) -> None:
    model = _model(torch.float16)
    opt = make(model)
    start = copy.deepcopy(model)
    # inf gradient on the first layer, whose gradient arrives last in backward
    handle = model[0].weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    opt.backward(_loss(model, 0))
    handle.remove()
    _assert_close(start, model, atol=0.0)
    assert opt.loss_scaler.loss_scale == 2**9
    assert all(p.grad is None for p in model.parameters())

    opt.backward(_loss(model, 1))  # a clean step updates again
    assert not torch.equal(start[2].weight, model[2].weight)
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()


def test_loss_scale_grows_after_clean_window() -> None:
    model = _model(torch.float16)
    opt = Lomo(model, lr=0.01, loss_scale_args={"init_scale": 2**8, "scale_window": 2})
    for i in range(2):
        opt.backward(_loss(model, i))
    assert opt.loss_scaler.loss_scale == 2**9
    assert opt.state_dict()["loss_scaler"]["cur_scale"] == 2**9


def test_bf16_uses_no_scaler() -> None:
    model = _model(torch.bfloat16)
    opt = Lomo(model, lr=0.01)
    opt.backward(_loss(model, 0))
    assert opt.loss_scaler is None and opt.clip_grad_norm is None


def _train(model: nn.Module, opt: Lomo, steps: range) -> None:
    for i in steps:
        opt.backward(_loss(model, i))
        opt.step()


def test_lomo_state_dict_round_trip_is_bit_exact() -> None:
    def make(m: nn.Module) -> Lomo:
        return Lomo(m, lr=0.1, loss_scale_args={"init_scale": 2**12, "scale_window": 3}, weight_decay=0.01)

    straight = _model()
    opt = make(straight)
    _train(straight, opt, range(4))

    first = _model()
    opt1 = make(first)
    _train(first, opt1, range(2))
    resumed = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt2, _ = reload_through_checkpoint(first, opt1, resumed, make)
    _train(resumed, opt2, range(2, 4))

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["loss_scaler"] == opt.state_dict()["loss_scaler"]
    assert opt2.loss_scaler.loss_scale == 2**13  # grew once, after 3 clean steps


def test_protocol_attributes() -> None:
    assert Lomo.updates_in_backward is True and AdaLomo.updates_in_backward is True
    with pytest.raises(ValueError):
        Lomo(_model(), clip_grad_norm=0.0)
