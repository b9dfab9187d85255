"""bf16 storage with fp32 compute (`CollieModel.compute_dtype`): fp32 numbers, bf16 gradients on
the stored parameters, and composition with activation checkpointing and LOMO."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from helpers import tiny_llama_config
from torch.utils._python_dispatch import TorchDispatchMode

from collie.distributed.parallelize import apply_activation_checkpointing
from collie.models import LlamaForCausalLM
from collie.models.llama.spec import LLAMA
from collie.optim import Lomo

torch.set_num_threads(1)


def _bf16_model() -> LlamaForCausalLM:
    return LlamaForCausalLM.from_config(tiny_llama_config(), seed=0, dtype=torch.bfloat16)


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _loss(model: LlamaForCausalLM) -> torch.Tensor:
    ids = _ids()
    return model(ids, labels=ids).loss


def _pair() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A bf16 model computing in fp32, and an fp32 model holding the same (bf16-rounded) values."""
    model = _bf16_model()
    reference = copy.deepcopy(model).float()
    model.compute_dtype = torch.float32
    return model, reference


def test_logits_equal_fp32_model_with_the_same_weights() -> None:
    model, reference = _pair()
    with torch.no_grad():
        got, want = model(_ids()).logits, reference(_ids()).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_gradients_reach_stored_parameters_in_bf16_and_hooks_fire() -> None:
    model, _ = _pair()
    fired = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: fired.append(name))
    _loss(model).backward()
    assert sorted(fired) == sorted(name for name, _ in model.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16, name


def test_checkpointing_matches_fp32_gradients() -> None:
    model = _bf16_model()
    reference = copy.deepcopy(model).float()
    apply_activation_checkpointing(LLAMA, model)
    model.compute_dtype = torch.float32
    _loss(model).backward()
    _loss(reference).backward()
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        want = grads[name.replace("._checkpoint_wrapped_module", "")].grad
        assert p.grad.dtype == torch.bfloat16
        torch.testing.assert_close(p.grad.float(), want, atol=1e-3, rtol=1e-2, msg=name)


class _Casts(TorchDispatchMode):
    """Records weak references to every bf16 -> fp32 copy of a layer matrix, and the dtypes
    every matrix multiply runs in."""

    def __init__(self, shapes: set) -> None:
        super().__init__()
        self.shapes, self.copies, self.matmul_dtypes = shapes, [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.bfloat16 and \
                out.dtype == torch.float32 and tuple(out.shape) in self.shapes:
            self.copies.append(weakref.ref(out))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
            self.matmul_dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return out


def test_checkpointing_keeps_no_upcast_weights_for_backward() -> None:
    """The point of upcasting inside the checkpointed region: forward keeps none of the layers'
    fp32 copies alive for backward, and backward's recomputation casts them again, so every
    matrix multiply, recomputed ones included, runs in fp32."""
    model, _ = _pair()
    apply_activation_checkpointing(LLAMA, model)
    layer_shapes = {tuple(p.shape) for p in model.layers.parameters() if p.ndim == 2}
    forward = _Casts(layer_shapes)
    with forward:
        loss = _loss(model)
    gc.collect()
    assert forward.copies, "no fp32 copies were made"
    assert not [ref for ref in forward.copies if ref() is not None], "fp32 weight copies kept for backward"
    backward = _Casts(layer_shapes)
    with backward:
        loss.backward()
    assert backward.copies, "backward did not recompute the fp32 copies"
    assert forward.matmul_dtypes == backward.matmul_dtypes == {torch.float32}


def test_lomo_updates_bf16_model_in_place() -> None:
    model, _ = _pair()
    apply_activation_checkpointing(LLAMA, model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    Lomo(model, lr=1e-2).backward(_loss(model))
    for name, p in model.named_parameters():
        assert p.dtype == torch.bfloat16 and p.grad is None, name
        # Norm weights sit at 1.0, where an update this small rounds back in bf16.
        if p.ndim == 2:
            assert not torch.equal(p, before[name]), name


def test_backward_keeps_stored_weights_not_fp32_copies() -> None:
    """Without checkpointing, what forward saves for backward holds no fp32 copy of any
    matrix: the linear layers and the head keep their bf16 weights and upcast again in backward."""
    model, _ = _pair()
    matrices = {tuple(p.shape) for p in model.parameters() if p.ndim == 2}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t,
                                                  lambda t: t):
        loss = _loss(model)
    assert (torch.bfloat16, tuple(model.lm_head.weight.shape)) in saved
    assert not [shape for dtype, shape in saved if dtype == torch.float32 and shape in matrices]
    loss.backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_linear_upcasts_in_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight larger than the upcast block is cast a block of rows at a time, in forward and
    backward, and gives what a whole fp32 copy gives."""
    from collie import dtypes
    from collie.models import layers

    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 64 * 10)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 64, generator=gen).bfloat16().requires_grad_()
    bias = torch.randn(50, generator=gen).bfloat16().requires_grad_()
    x = torch.randn(3, 7, 64, generator=gen, requires_grad=True)
    ref_w, ref_b, ref_x = (t.detach().clone().requires_grad_() for t in (weight, bias, x))
    largest = _LargestCopy()
    with largest:
        out = layers.cast_linear(x, weight, bias)
        out.square().sum().backward()
    assert largest.elements == 10 * 64  # never more than one block of rows in fp32
    want = torch.nn.functional.linear(ref_x, ref_w.float(), ref_b.float())
    want.square().sum().backward()
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-4, rtol=1e-6)
    assert weight.grad.dtype == bias.grad.dtype == torch.bfloat16
    torch.testing.assert_close(weight.grad, ref_w.grad, atol=0, rtol=1e-2)
    torch.testing.assert_close(bias.grad, ref_b.grad, atol=0, rtol=1e-2)


class _LargestCopy(TorchDispatchMode):
    """The largest bf16 -> fp32 copy made."""

    elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.bfloat16 and out.dtype == torch.float32:
            self.elements = max(self.elements, out.numel())
        return out
