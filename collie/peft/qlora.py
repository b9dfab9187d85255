"""QLoRA's step in `parallelize`: the frozen decoder linears of a loaded model put into 4 bits;
LoRA layers keep their trainable A and B in full precision."""

from __future__ import annotations

import torch
from torch import nn

from collie.config.quantization import QuantSettings
from collie.peft.lora import LoraLinear
from collie.peft.quantize import Linear4bit, is_4bit


@torch.no_grad()
def quantize_frozen_linears(model: nn.Module, spec, settings: QuantSettings, device: torch.device) -> None:
    """Store the decoder blocks' linear weights in 4 bits on `device` (weights already loaded)."""
    import bitsandbytes as bnb  # optional package (pip install collie[qlora]); require_backend said so

    for _, block in spec.block_items(model):
        for name, module in list(block.named_modules()):
            # Trainable layers (the adapters' A and B) stay in full precision.
            if not isinstance(module, (nn.Linear, LoraLinear)) or module.weight.requires_grad or is_4bit(module.weight):
                continue
            weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type=settings.quant_type,
                                       compress_statistics=settings.double_quant).to(device)
            bias = module.bias
            if isinstance(module, LoraLinear):
                module.weight = weight
            else:
                parent_name, _, attr = name.rpartition(".")
                replacement = Linear4bit(module)
                replacement.weight = weight
                replacement.bias = bias
                setattr(block.get_submodule(parent_name) if parent_name else block, attr, replacement)
