"""LOMO and AdaLomo take the LM head's gradient from the loss's backward a block of rows at a time
(`collie.row_gradients`): the update equals the one from the whole gradient (float64), the whole
gradient is never made, and it is returned whole where nothing takes it."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from helpers import LargestNewTensor, tiny_llama_config

from collie import dtypes
from collie.distributed.parallelize import apply_activation_checkpointing
from collie.models import LlamaForCausalLM
from collie.models.base import spec_for
from collie.models.loss import _VocabularyBlockedCrossEntropy
from collie.optim import AdaLomo, Lomo
from collie.optim._fused import FusedBackwardOptimizer
from collie.row_gradients import Takers, rows_taker, take_rows

VOCAB, HIDDEN = 256, 64


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 24), generator=g)
        labels = ids.clone()
        labels[0, :9] = -100  # a prompt without loss
        batches.append((ids, labels))
    return batches


def _train(optimizer_cls: type, skip_logits: bool, tied: bool = False, **kwargs) -> LlamaForCausalLM:
    """Three steps; `skip_logits`: the loss's own backward (rows taken), else whole logits and a
    whole head gradient through the optimizer's hook."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=tied)).double()
    opt = optimizer_cls(model, lr=0.05, **kwargs)
    for ids, labels in _batches():
        opt.backward(model(ids, labels=labels, skip_logits=skip_logits).loss)
    return model


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
@pytest.mark.parametrize("kwargs", [{}, {"clip_grad_norm": 0.5}, {"clip_grad_value": 0.01, "weight_decay": 0.1}])
def test_rows_taken_give_the_whole_gradient_update(optimizer_cls: type, kwargs: dict,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 48 * HIDDEN)  # the head in 6 blocks
    whole = _train(optimizer_cls, False, **kwargs)
    by_rows = _train(optimizer_cls, True, **kwargs)
    for (name, got), want in zip(by_rows.named_parameters(), whole.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)
    assert (by_rows.lm_head.weight - LlamaForCausalLM(tiny_llama_config()).lm_head.weight).abs().max() > 0


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
def test_backward_makes_no_head_sized_tensor(optimizer_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 48 * HIDDEN)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(intermediate_size=64)).double()  # the head is the largest matrix
    opt = optimizer_cls(model, lr=0.05)
    ids, labels = _batches()[0]
    loss = model(ids, labels=labels, skip_logits=True).loss
    with LargestNewTensor() as largest:
        opt.backward(loss)
    assert largest.elements < VOCAB * HIDDEN
    assert model.lm_head.weight.grad is None


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
def test_a_tied_head_is_not_taken_by_rows(optimizer_cls: type) -> None:
    """The tied weight is read by the embedding too: its rows from the loss are not its gradient."""
    whole = _train(optimizer_cls, False, tied=True)
    by_rows = _train(optimizer_cls, True, tied=True)
    for (name, got), want in zip(by_rows.named_parameters(), whole.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)


def test_the_gradient_is_whole_outside_the_in_backward_passes() -> None:
    """Outside the optimizer's own backward, and in a micro-batch before the last (accumulated in
    `.grad`), the loss returns the head's gradient whole."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).double()
    opt = Lomo(model, lr=0.05)
    assert rows_taker(model.lm_head.weight) is None
    ids, labels = _batches()[0]
    opt.backward(model(ids, labels=labels, skip_logits=True).loss, last_microbatch=False)
    assert model.lm_head.weight.grad.shape == (VOCAB, HIDDEN)


def test_registration_does_not_keep_model_and_optimizer_alive() -> None:
    model = LlamaForCausalLM(tiny_llama_config())
    refs = weakref.ref(model), weakref.ref(Lomo(model, lr=0.05))
    del model
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_bf16_stored_linear_layers_hand_their_gradients_over_by_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """With bf16 storage computing in fp32 every linear layer's backward is collie's own: LOMO
    takes each weight's gradient by rows (fp32 blocks, no whole bf16 gradient), under checkpointing."""
    taken = []
    offered = FusedBackwardOptimizer._on_grad_rows
    monkeypatch.setattr(FusedBackwardOptimizer, "_on_grad_rows",
                        lambda self, p, rows, blocks=None: taken.append(names[id(p)]) or offered(self, p, rows, blocks))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    model.compute_dtype = torch.float32
    apply_activation_checkpointing(spec_for(model.config), model)
    names = {id(p): name.replace("._checkpoint_wrapped_module", "") for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids, labels = _batches()[0]
    Lomo(model, lr=0.05).backward(model(ids, labels=labels, skip_logits=True).loss)
    matrices = sorted(names[id(p)] for p in model.parameters() if p.dim() == 2 and "embed" not in names[id(p)])
    # (the embedding's gradient is sparse; the MLPs' and head's are handed over in several blocks)
    assert len(matrices) == 2 * 7 + 1 and sorted(set(taken)) == matrices
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters() if names[id(p)] in taken)


def test_lomo_head_loss_makes_no_logits_sized_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """For a head LOMO takes by blocks, forward keeps a log-sum-exp per row, not the logits."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 48 * HIDDEN)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).double()
    opt = Lomo(model, lr=0.05)
    ids, labels = _batches()[0]
    rows = int((labels[:, 1:] != -100).sum())
    with LargestNewTensor() as largest:
        loss = model(ids, labels=labels, skip_logits=True).loss
        opt.backward(loss)
    assert largest.elements < rows * VOCAB


@pytest.mark.parametrize("taken", [False, True])
def test_vocabulary_blocked_loss_equals_cross_entropy(taken: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss and every gradient (a biased head; float64) of the vocabulary-blocked loss, its
    weight's gradient returned whole or handed over in blocks that make it up exactly."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 8 * HIDDEN)  # blocks of 4 vocabulary rows
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, HIDDEN, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(30, HIDDEN, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(30, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 30, (10,), generator=g)
    got = {}
    if taken:
        def take(index: tuple, block: torch.Tensor) -> None:
            rows = (index[0].start, index[0].stop)
            assert block.numel() <= 2 * HIDDEN and rows not in got
            got[rows] = block

        take_rows(weight, lambda p: Takers(rows=None, block=take), by_blocks=True)
    loss = _VocabularyBlockedCrossEntropy.apply(h, weight, bias, y)
    want = torch.nn.functional.cross_entropy(h @ weight.t() + bias, y, reduction="sum")
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(3 * loss, (h, weight, bias), allow_unused=True)
    wanted = torch.autograd.grad(3 * want, (h, weight, bias))
    for name, a, b in zip(("h", "weight", "bias"), grads, wanted):
        if name == "weight" and taken:
            assert a is None
            a = torch.cat([got[rows] for rows in sorted(got)])
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)
