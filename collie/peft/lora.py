"""LoRA layers: a frozen linear layer plus a trainable low-rank update, y = W x + s · B A x.

The base layer's parameters keep their names (`q_proj.weight`), so HF loading, tensor-parallel
plans and checkpoints see the same model; the adapters sit beside them as `q_proj.lora_A.weight`
and `q_proj.lora_B.weight`, the names peft's files use. Adapters are stored in at least fp32
whatever the base's storage dtype (a bf16 base with fp32 adapters is the memory mode).
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Iterator, Optional

import torch
from torch import nn

from collie.config import ConfigError
from collie.config.peft_settings import LoraSettings
from collie.dtypes import at_least_fp32
from collie.models.adapter_names import is_adapter_name
from collie.models.init import named_generator
from collie.models.layers import Linear
from collie.peft.quantize import base_linear
from collie.tensors import copy_whole_into

_WRAPPER = re.compile(r"(^|\.)_checkpoint_wrapped_module(?=\.|$)")


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, scaling: float, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.rank, self.alpha, self.scaling = rank, alpha, scaling
        kwargs = {"device": base.weight.device, "dtype": at_least_fp32(base.weight.dtype), "bias": False}
        self.lora_A = Linear(self.in_features, rank, **kwargs)
        self.lora_B = Linear(rank, self.out_features, **kwargs)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Off inside `adapters_disabled`: the base model alone (a preference run's reference).
        self.adapter_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return base_linear(x, self.weight, self.bias)
        return base_linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, " \
               f"scaling={self.scaling:g}"


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The model without its LoRA adapters while inside (peft's `disable_adapter`)."""
    layers = [module for module in model.modules() if isinstance(module, LoraLinear)]
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.adapter_enabled = True


def hf_module_names(model: nn.Module, spec) -> dict[str, str]:
    """Our linear module name -> the checkpoint module that stores its weight (a fused q/k/v
    matrix stores three of ours)."""
    names = [n for n in model.state_dict() if n.endswith(".weight") and not is_adapter_name(n)]
    return {ours[:-len(".weight")]: hf[:-len(".weight")]
            for hf, parts in spec.adapter.hf_layout(names, model.config) for ours in parts if hf.endswith(".weight")}


def add_lora(model: nn.Module, spec, settings: LoraSettings,
             ranks: Optional[dict[str, tuple[int, float]]] = None) -> dict[str, tuple[int, float]]:
    """Put adapters on the decoder blocks' linear layers that `settings` targets and freeze
    everything else; returns (rank, alpha) by adapted module name. `ranks` gives them per
    module instead (an adapter read from files)."""
    hf_of = hf_module_names(model, spec)
    blocks = spec.blocks(model)
    blocks_path = next(name for name, module in model.named_modules() if module is blocks)
    adapted, seen = {}, set()
    for index, block in spec.block_items(model):
        for sub_name, module in list(block.named_modules()):
            if not isinstance(module, nn.Linear):
                continue
            name = f"{blocks_path}.{index}.{sub_name}"
            hf_name = hf_of.get(name, name)
            seen.update({sub_name.rsplit(".", 1)[-1], hf_name.rsplit(".", 1)[-1]})
            if ranks is not None:
                if name not in ranks:
                    continue
                rank, alpha = ranks[name]
            elif settings.targets(name, hf_name):
                rank, alpha = settings.rank_and_alpha(name, hf_name)
            else:
                continue
            parent_name, _, attr = sub_name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, attr, LoraLinear(module, rank, alpha, settings.scaling(rank, alpha), settings.dropout))
            adapted[name] = (rank, alpha)
    if not adapted:
        targets = settings.target_modules
        shown = list(targets) if isinstance(targets, tuple) else targets
        raise ConfigError(f"peft.target_modules: {shown!r} matches no linear layer of the model "
                          f"(its layers: {', '.join(sorted(seen))})")
    for param_name, param in model.named_parameters():
        param.requires_grad_(is_adapter_name(param_name))
    return adapted


def adapter_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """The LoRA layers by clean module name (activation-checkpoint wrappers left out)."""
    return {_WRAPPER.sub("", name).lstrip("."): m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def init_adapters(model: nn.Module, seed: int) -> None:
    """peft's initialisation (A: Kaiming-uniform, B: zeros, so training starts at the base
    model), each A drawn from its own named generator: identical on every layout, and copied
    into whatever shard of it this rank holds."""
    for name, module in adapter_modules(model).items():
        a_name = f"{name}.lora_A.weight"
        bound = 1.0 / math.sqrt(module.in_features)
        a = torch.empty(module.rank, module.in_features).uniform_(-bound, bound, generator=named_generator(a_name, seed))
        copy_whole_into(module.lora_A.weight, a.to(module.lora_A.weight.dtype))
        copy_whole_into(module.lora_B.weight, torch.zeros(module.out_features, module.rank,
                                                          dtype=module.lora_B.weight.dtype))


@torch.no_grad()
def merge_adapters(model: nn.Module) -> None:
    """Fold each update into its base weight (W += s · B A, computed in at least fp32) and put
    plain linear layers back: the model is then an ordinary one, exportable as such."""
    for name, module in adapter_modules(model).items():
        weight = module.weight
        dtype = at_least_fp32(weight.dtype)
        delta = module.lora_B.weight.to(dtype) @ module.lora_A.weight.to(dtype)
        weight.copy_((weight.to(delta.dtype) + module.scaling * delta).to(weight.dtype))
        plain = Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        model.set_submodule(name, plain)
