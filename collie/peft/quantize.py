"""QLoRA: the frozen base's linear layers stored in 4 bits (bitsandbytes' NF4 or FP4), LoRA
adapters trained on top in full precision.

`quantization_config` takes transformers' `BitsAndBytesConfig(load_in_4bit=True, ...)` or the
same fields as a mapping (YAML). The decoder blocks' linear layers are quantized once their
weights are loaded and on their device; the embedding, norms and head stay as they are (as
transformers does). Each matmul dequantizes its weight to the activations' dtype.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from collie.config import ConfigError
from collie.models.layers import cast_linear


def _not_cpu_kernel_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# Importing bitsandbytes (peft does so too, in every LoRA run) on a CPU with AVX512-BF16 logs a
# warning that its optional hub kernel could not be fetched; it then uses its built-in one. It
# says nothing about the run, so that one message is dropped (a filter on its logger, set before
# any import of bitsandbytes: collie's commands import this module first).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_cpu_kernel_notice)


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
