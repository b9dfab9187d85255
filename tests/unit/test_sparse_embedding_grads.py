"""LOMO and AdaLomo let an embedding make a sparse gradient (the batch's token rows only) when
they see it whole in their hook: the update equals the dense gradient's, and no tensor of the
embedding's size is made in backward."""

from __future__ import annotations

import pytest
import torch
from helpers import LargestNewTensor
from torch import nn

from collie.optim import AdaLomo, Lomo

torch.set_num_threads(1)

VOCAB, DIM = 96, 32


class _TinyLM(nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        self.double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.tanh(self.mix(self.embed(ids))))
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def _batch(step: int) -> torch.Tensor:
    # 20 of the 96 token ids, some repeated: most embedding rows get no gradient.
    return torch.randint(0, 20, (2, 12), generator=torch.Generator().manual_seed(step))


def _train(optimizer_cls: type, sparse: bool, accumulate: bool = False, **kwargs) -> _TinyLM:
    model = _TinyLM()
    opt = optimizer_cls(model, lr=0.05, **kwargs)
    assert model.embed.sparse
    model.embed.sparse = sparse
    for step in range(3):
        if accumulate:
            opt.backward(model(_batch(10 + step)), last_microbatch=False)
        opt.backward(model(_batch(step)))
    return model


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
@pytest.mark.parametrize("kwargs", [{}, {"clip_grad_norm": 0.5}, {"clip_grad_value": 0.01, "weight_decay": 0.1}])
@pytest.mark.parametrize("accumulate", [False, True])
def test_sparse_gradient_gives_the_dense_update(optimizer_cls: type, kwargs: dict, accumulate: bool) -> None:
    dense = _train(optimizer_cls, False, accumulate, **kwargs)
    sparse = _train(optimizer_cls, True, accumulate, **kwargs)
    for (name, got), want in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)
    assert not torch.equal(sparse.embed.weight[:20], _TinyLM().embed.weight[:20])


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
def test_backward_makes_no_embedding_sized_tensor(optimizer_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    from collie import dtypes

    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 8 * DIM)
    model = _TinyLM()
    model.head = nn.Linear(DIM, 8, bias=False).double()  # a head smaller than the embedding
    opt = optimizer_cls(model, lr=0.05)
    ids = _batch(0) % 8
    largest = LargestNewTensor()
    loss = nn.functional.cross_entropy(model.head(torch.tanh(model.mix(model.embed(ids)))).flatten(0, 1),
                                       ids.flatten())
    with largest:
        opt.backward(loss)
    assert largest.elements < VOCAB * DIM


def test_a_tied_embedding_keeps_dense_gradients() -> None:
    model = _TinyLM(tied=True)
    Lomo(model, lr=0.05)
    assert not model.embed.sparse


def test_fp16_on_cpu_keeps_dense_gradients() -> None:
    """PyTorch's CPU kernels cannot add sparse fp16 gradients (gradient accumulation)."""
    model = _TinyLM().half()
    Lomo(model, lr=0.05)
    assert not model.embed.sparse
