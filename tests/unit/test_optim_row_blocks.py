"""LOMO and AdaLomo update large parameters a block of rows at a time: no temporary of a
parameter's size exists while its update runs (a half-precision gradient is widened a block at
a time too), and the result is the whole-tensor update's."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from collie import dtypes
from collie.optim import AdaLomo, Lomo

torch.set_num_threads(1)

ROWS, COLS, BLOCK_ROWS = 96, 32, 8


class _Embedder(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(ROWS, COLS).to(dtype)
        self.norm = nn.Parameter(torch.ones(COLS, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ((self.embed(ids) * self.norm).float() - 0.5).square().mean()


def _train(optimizer_cls: type, dtype: torch.dtype, steps: int = 3, **kwargs) -> _Embedder:
    model = _Embedder(dtype)
    opt = optimizer_cls(model, lr=1e-2, weight_decay=0.1, **kwargs)
    for step in range(steps):
        ids = torch.randint(0, ROWS, (4, 16), generator=torch.Generator().manual_seed(step))
        opt.backward(model(ids))
    return model


class _LargestOutput(TorchDispatchMode):
    """The most elements of any new tensor an op made (views and in-place results excluded)."""

    elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in [*args, *(kwargs or {}).values()]
                  if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in inputs:
                self.elements = max(self.elements, tensor.numel())
        return out


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
@pytest.mark.parametrize("clip", [None, 0.05])
def test_row_blocks_give_the_whole_tensor_update(optimizer_cls: type, clip: float | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _train(optimizer_cls, torch.float64, clip_grad_norm=clip)
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", BLOCK_ROWS * COLS)
    blocked = _train(optimizer_cls, torch.float64, clip_grad_norm=clip)
    for (name, got), want in zip(blocked.named_parameters(), whole.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)
    assert not torch.equal(blocked.embed.weight, _Embedder(torch.float64).embed.weight)


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_makes_no_parameter_sized_temporary(optimizer_cls: type, dtype: torch.dtype,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", BLOCK_ROWS * COLS)
    model = _Embedder(dtype)
    opt = optimizer_cls(model, lr=1e-2, weight_decay=0.1)
    opt._step_count = 1
    grad = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0)).to(dtype)
    before = model.embed.weight.detach().clone()
    largest = _LargestOutput()
    with largest, torch.no_grad():
        opt._update_param(model.embed.weight, grad, 1e-2)
    assert largest.elements <= BLOCK_ROWS * COLS
    assert not torch.equal(model.embed.weight, before)


@pytest.mark.parametrize("clip_grad_value", [None, 0.5])
def test_adalomo_widens_a_bf16_gradient_by_blocks_to_the_same_update(clip_grad_value: float | None,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of the bf16 gradient, each widened on its own (three passes), give the update the
    whole fp32 gradient gives, to fp32 rounding of the update's norm."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", BLOCK_ROWS * COLS)
    grad = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(1)).mul_(torch.linspace(0.1, 3, COLS))
    results = []
    for given in (grad.bfloat16(), grad.bfloat16().float()):
        model = _Embedder(torch.float32)
        opt = AdaLomo(model, lr=1e-2, weight_decay=0.1, clip_threshold=0.5, clip_grad_value=clip_grad_value)
        for step in (1, 2):
            opt._step_count = step
            with torch.no_grad():
                opt._update_param(model.embed.weight, given.clone(), 1e-2)  # the wide path updates in it
        results.append(model.embed.weight.detach())
    narrow, wide = results
    torch.testing.assert_close(narrow, wide, rtol=1e-6, atol=1e-7)
    assert not torch.equal(narrow, _Embedder(torch.float32).embed.weight)
