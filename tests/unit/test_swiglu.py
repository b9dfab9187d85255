"""LLaMA's gated MLP as one autograd node (`collie.models.swiglu`): the numbers of the op-by-op
module path (bitwise in float64 and fp32, bf16 storage computing in fp32 too), fewer tensors kept
for backward, the module path wherever the projections are not collie's plain layers, and LOMO
taking its weights' gradients by rows under activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import LargestNewTensor, tiny_llama_config
from peft import LoraConfig, get_peft_model

from collie import dtypes
from collie.distributed.parallelize import apply_activation_checkpointing
from collie.models import LlamaForCausalLM
from collie.models.base import spec_for
from collie.models.common.mlp import GatedMLP
from collie.optim import AdaLomo, Lomo
from collie.optim._fused import RowGradient

HIDDEN, INTERMEDIATE = 64, 128


def _unfused(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """A copy whose MLPs run op by op, as autograd would without the fused node."""
    copy_ = copy.deepcopy(model)
    for module in copy_.modules():
        if isinstance(module, GatedMLP):
            module._fusable = lambda x: False
    return copy_


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_equals_the_module_path_bitwise(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    fused = LlamaForCausalLM(tiny_llama_config()).to(dtype)
    plain = _unfused(fused)
    a, b = fused(_ids(), labels=_ids()), plain(_ids(), labels=_ids())
    assert torch.equal(a.logits, b.logits)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_bf16_storage_computing_in_fp32_equals_the_module_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 32 * HIDDEN)  # the weights widened in blocks
    torch.manual_seed(0)
    fused = LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16)
    fused.compute_dtype = torch.float32
    plain = _unfused(fused)
    a, b = fused(_ids(), labels=_ids()), plain(_ids(), labels=_ids())
    assert a.logits.dtype == torch.float32 and torch.equal(a.logits, b.logits)
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        assert p.grad.dtype == torch.bfloat16 and torch.equal(p.grad, q.grad), name


def _saved_elements(mlp: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements of the activations `mlp`'s forward keeps for backward (parameters not counted)."""
    params = {p.data_ptr() for p in mlp.parameters()}
    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(x)
    return sum(kept)


def test_fused_keeps_the_projections_only() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    mlp = model.layers["0"].mlp
    x = torch.randn(2, 20, HIDDEN, requires_grad=True)
    tokens = 2 * 20
    assert _saved_elements(mlp, x) == tokens * (HIDDEN + 2 * INTERMEDIATE)
    mlp._fusable = lambda x: False
    assert _saved_elements(mlp, x) >= tokens * (HIDDEN + 4 * INTERMEDIATE)


def test_projections_that_are_not_plain_layers_run_op_by_op() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    x = torch.randn(1, 5, HIDDEN)
    assert model.layers["0"].mlp._fusable(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not model.layers["0"].mlp._fusable(x)
    hooked = copy.deepcopy(model)
    hooked.layers["0"].mlp.up_proj.register_forward_hook(lambda module, args, out: None)
    assert not hooked.layers["0"].mlp._fusable(x)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["up_proj"]))
    lora_mlp = peft_model.base_model.model.layers["0"].mlp
    assert not lora_mlp._fusable(x)
    assert LlamaForCausalLM(tiny_llama_config(mlp_bias=True)).layers["0"].mlp._fusable(x) is False


@pytest.mark.parametrize("optimizer_cls", [Lomo, AdaLomo])
def test_lomo_takes_the_mlp_gradients_by_rows_under_checkpointing(optimizer_cls: type,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same update as whole gradients (float64), and no tensor as large as an MLP weight."""
    monkeypatch.setattr(dtypes, "UPCAST_BLOCK_ELEMENTS", 16 * HIDDEN)
    config = tiny_llama_config(intermediate_size=1024, vocab_size=64)  # the MLP weights are the largest
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).double()
    plain = _unfused(model)
    for m in (model, plain):
        apply_activation_checkpointing(spec_for(config), m)
    opts = optimizer_cls(model, lr=0.05, clip_grad_norm=1.0), optimizer_cls(plain, lr=0.05, clip_grad_norm=1.0)
    for step in range(2):
        ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(step))
        loss = model(ids, labels=ids, skip_logits=True).loss
        with LargestNewTensor() as largest:
            opts[0].backward(loss)
        assert largest.elements < 1024 * HIDDEN
        opts[1].backward(plain(ids, labels=ids, skip_logits=True).loss)
    for (name, got), want in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)


def test_adalomo_takes_smaller_matrices_whole_inside_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdaLomo makes each block of a gradient taken by rows three times, so it takes by rows only
    its largest matrices (here the head); the MLP's gradients it makes whole as the node offers
    them, one at a time: the same update as autograd's whole gradients (float64)."""
    whole_made = []
    made = RowGradient.whole
    monkeypatch.setattr(RowGradient, "whole", lambda self, dtype: whole_made.append(self.shape) or made(self, dtype))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=512)).double()  # the head is the largest matrix
    plain = _unfused(model)
    opts = AdaLomo(model, lr=0.05), AdaLomo(plain, lr=0.05)
    for step in range(2):
        ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(step))
        opts[0].backward(model(ids, labels=ids, skip_logits=True).loss)
        opts[1].backward(plain(ids, labels=ids, skip_logits=True).loss)
    assert sorted(set(whole_made)) == [(HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]
    for (name, got), want in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=name)
