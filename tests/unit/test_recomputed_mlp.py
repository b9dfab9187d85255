"""The gated MLP under activation checkpointing (`collie.models.swiglu`, `collie.models.recomputation`):
it keeps its input only, its recomputation in backward makes nothing, its first run and backward go
a block of intermediate columns at a time, and LOMO takes each block of its weights' gradients as
it is made — the numbers of the module path in float64 throughout."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import LargestNewTensor, tiny_llama_config

from collie import dtypes
from collie.distributed.parallelize import apply_activation_checkpointing
from collie.models import LlamaForCausalLM, swiglu
from collie.models.base import spec_for
from collie.models.common.mlp import GatedMLP
from collie.models.recomputation import CheckpointedRun, recomputed_in_backward, recomputing
from collie.optim import AdaLomo, Lomo
from collie.optim._fused import FusedBackwardOptimizer

HIDDEN, INTERMEDIATE, TOKENS = 64, 1024, 2 * 16


@pytest.fixture(autouse=True)
def _narrow_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 128 intermediate columns: 8 of them at the test's shape."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 16 * HIDDEN)
    monkeypatch.setattr(swiglu, "MIN_BLOCK_COLUMNS", 128)


def _models(checkpointing: bool = True) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A float64 model (fused MLP, checkpointed) and an op-by-op copy that is not checkpointed."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(intermediate_size=INTERMEDIATE, vocab_size=64)).double()
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, GatedMLP):
            module._fusable = lambda x: False
    if checkpointing:
        apply_activation_checkpointing(spec_for(model.config), model)
    return model, plain


def _ids(step: int) -> torch.Tensor:
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(step))


def _assert_same_parameters(model: torch.nn.Module, plain: torch.nn.Module, attr: str | None = None) -> None:
    for (name, got), want in zip(model.named_parameters(), plain.parameters()):
        got, want = (got, want) if attr is None else (getattr(got, attr), getattr(want, attr))
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)


def test_the_flags_follow_the_runs_and_the_contexts_can_be_entered_again() -> None:
    assert not recomputed_in_backward() and not recomputing()
    again = CheckpointedRun(again=True)
    for _ in range(2):  # a retained graph recomputes once per backward, with the same context
        with CheckpointedRun(again=False):
            assert recomputed_in_backward() and not recomputing()
            with again:
                assert recomputing()
            assert not recomputing()
    assert not recomputed_in_backward()


def test_a_checkpointed_mlp_keeps_its_input_and_its_recomputation_makes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, plain = _models()
    runs = []
    by_blocks = swiglu._forward_by_blocks
    monkeypatch.setattr(swiglu, "_forward_by_blocks", lambda *a: runs.append(1) or by_blocks(*a))
    mlp = model.layers["0"]._checkpoint_wrapped_module.mlp
    kept = []
    with CheckpointedRun(again=False), torch.autograd.graph.saved_tensors_hooks(
            lambda t: kept.append(t.numel()) or t, lambda t: t):
        mlp(torch.randn(TOKENS, HIDDEN, dtype=torch.float64, requires_grad=True))
    assert sum(kept) == TOKENS * HIDDEN + 3 * INTERMEDIATE * HIDDEN  # the input and the three weights
    runs.clear()
    model(_ids(0), labels=_ids(0)).loss.backward()
    assert len(runs) == 2  # one first run per layer; the recomputations made nothing
    plain(_ids(0), labels=_ids(0)).loss.backward()
    _assert_same_parameters(model, plain, "grad")


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_lomo_takes_each_block_as_it_is_made(clip: float | None, checkpointing: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The update of whole gradients (float64), every matrix handed over in blocks, and no tensor as
    large as the MLP's [tokens × intermediate] made in backward (with checkpointing, none in its
    first run either)."""
    blocks = []
    offered = FusedBackwardOptimizer._on_grad_block
    monkeypatch.setattr(FusedBackwardOptimizer, "_on_grad_block",
                        lambda self, p, index, block: blocks.append(block.shape) or offered(self, p, index, block))
    model, plain = _models(checkpointing)
    opts = Lomo(model, lr=0.05, clip_grad_norm=clip), Lomo(plain, lr=0.05, clip_grad_norm=clip)
    for step in range(2):
        with LargestNewTensor() as in_forward:
            loss = model(_ids(step), labels=_ids(step), skip_logits=True).loss
        assert (in_forward.elements < TOKENS * INTERMEDIATE) == checkpointing
        with LargestNewTensor() as in_backward:
            opts[0].backward(loss)
        assert in_backward.elements < TOKENS * INTERMEDIATE
        opts[1].backward(plain(_ids(step), labels=_ids(step), skip_logits=True).loss)
    _assert_same_parameters(model, plain)
    assert (128, HIDDEN) in blocks and (HIDDEN, 128) in blocks  # gate/up rows, down columns
    assert max(shape.numel() for shape in blocks) <= 128 * HIDDEN


def test_adalomo_under_checkpointing_gets_the_whole_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdaLomo's update needs a whole matrix's statistics: the node makes the projections again and
    offers each gradient whole, one at a time — the same update (float64)."""
    model, plain = _models()
    opts = AdaLomo(model, lr=0.05), AdaLomo(plain, lr=0.05)
    for step in range(2):
        opts[0].backward(model(_ids(step), labels=_ids(step), skip_logits=True).loss)
        opts[1].backward(plain(_ids(step), labels=_ids(step), skip_logits=True).loss)
    _assert_same_parameters(model, plain)


def test_work_blocks_cover_the_range_once_and_are_at_most_sixteen() -> None:
    assert dtypes.work_blocks(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    blocks = dtypes.work_blocks(11008, 128)  # a 7B MLP at 8k tokens: 86 blocks of 128, widened
    assert len(blocks) == dtypes.MAX_WORK_BLOCKS
    assert [i for b in blocks for i in range(b.start, b.stop)] == list(range(11008))


def test_bf16_blocks_sum_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 activations (GPUs): the sums over 16 blocks are kept in fp32 (here the output's), so the
    block-by-block MLP is as close to the fp32 result as one whole bf16 MLP."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 4 * 64 * 256)
    monkeypatch.setattr(swiglu, "MIN_BLOCK_COLUMNS", 64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    gate, up = torch.randn(1024, 256, generator=g) / 16, torch.randn(1024, 256, generator=g) / 16
    down = torch.randn(256, 1024, generator=g) / 32
    assert len(swiglu._column_blocks(64, gate)) == 16

    def mlp(*tensors: torch.Tensor) -> torch.Tensor:
        x, gate, up, down = tensors
        return torch.nn.functional.linear(torch.nn.functional.silu(x @ gate.t()) * (x @ up.t()), down)

    want = mlp(x, gate, up, down)
    narrow = [t.bfloat16() for t in (x, gate, up, down)]
    whole_error = (mlp(*narrow).float() - want).abs().max()
    assert (swiglu._forward_by_blocks(*narrow).float() - want).abs().max() <= 1.25 * whole_error
