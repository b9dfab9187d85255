"""QLoRA: the frozen base's linear layers stored in 4 bits (bitsandbytes' NF4 or FP4), LoRA
adapters trained on top in full precision.

`quantization_config` takes transformers' `BitsAndBytesConfig(load_in_4bit=True, ...)` or the
same fields as a mapping (YAML). The decoder blocks' linear layers are quantized once their
weights are loaded and on their device; the embedding, norms and head stay as they are (as
transformers does). Each matmul dequantizes its weight to the activations' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from collie.config import ConfigError
from collie.models.layers import cast_linear

QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class QuantSettings:
    quant_type: str = "nf4"
    double_quant: bool = False


def quant_settings(config) -> Optional[QuantSettings]:
    """The run's 4-bit settings (None: no quantization); refuses what collie cannot honour."""
    source = config.quantization_config
    if source is None:
        return None
    if hasattr(source, "to_dict"):
        fields = source.to_dict()
    elif isinstance(source, Mapping):
        fields = dict(source)
    else:
        raise ConfigError(f"quantization_config: expected transformers' BitsAndBytesConfig or a mapping of its "
                          f"fields, got {type(source).__name__}")
    if fields.get("load_in_8bit"):
        raise ConfigError("quantization_config.load_in_8bit: 8-bit weights are not supported; use load_in_4bit "
                          "(QLoRA)")
    if not fields.get("load_in_4bit"):
        raise ConfigError("quantization_config.load_in_4bit: must be true (collie stores the frozen base in 4 bits "
                          "for QLoRA)")
    quant_type = fields.get("bnb_4bit_quant_type", "nf4")
    if quant_type not in QUANT_TYPES:
        raise ConfigError(f"quantization_config.bnb_4bit_quant_type: {quant_type!r} is not one of nf4, fp4")
    return QuantSettings(quant_type, bool(fields.get("bnb_4bit_use_double_quant", False)))


def check_layout(config) -> None:
    """QLoRA trains on one device or replicated data parallel, with LoRA adapters."""
    if config.peft.type != "lora" and config.peft_config is None:
        raise ConfigError("quantization_config: a 4-bit base trains through LoRA adapters; set peft.type=lora")
    for name, value, allowed in (("tp_size", config.tp_size, 1), ("pp_size", config.pp_size, 1),
                                 ("zero_stage", config.zero_stage, 0)):
        if value != allowed:
            raise ConfigError(f"{name}: QLoRA runs on one device or replicated data parallel (zero_stage 0); "
                              f"4-bit weights cannot be split, got {name}={value}")


def require_backend(device: torch.device) -> None:
    """One line when bitsandbytes is missing or has no 4-bit kernels for `device`."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("quantization_config: QLoRA needs the `bitsandbytes` package (pip install bitsandbytes)") \
            from None
    probe = bnb.nn.Params4bit(torch.zeros(64, 64), requires_grad=False, quant_type="nf4")
    try:
        probe.to(device)
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        raise ConfigError(f"quantization_config: bitsandbytes {bnb.__version__} has no 4-bit kernels for "
                          f"{device.type} ({type(e).__name__}); QLoRA needs a CUDA GPU here") from None


def is_4bit(weight: torch.Tensor) -> bool:
    return getattr(weight, "quant_state", None) is not None


def base_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A linear layer whose weight may be 4-bit: dequantized to the activations' dtype."""
    if not is_4bit(weight):
        return cast_linear(x, weight, bias)
    import bitsandbytes as bnb

    out = bnb.matmul_4bit(x, weight.t(), bias=None, quant_state=weight.quant_state)
    return out if bias is None else out + bias.to(out.dtype)


class Linear4bit(nn.Module):
    """A frozen linear layer with a 4-bit weight (same parameter names as the layer it replaces)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return base_linear(x, self.weight, self.bias)


@torch.no_grad()
def quantize_frozen_linears(model: nn.Module, spec, settings: QuantSettings, device: torch.device) -> None:
    """Store the decoder blocks' linear weights in 4 bits on `device` (weights already loaded)."""
    import bitsandbytes as bnb

    from collie.peft.lora import LoraLinear

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
