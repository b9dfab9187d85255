"""QLoRA: the frozen base's linear layers stored in 4 bits (bitsandbytes' NF4 or FP4), LoRA
adapters trained on top in full precision.

`quantization_config` takes transformers' `BitsAndBytesConfig(load_in_4bit=True, ...)` or the
same fields as a mapping (YAML). The decoder blocks' linear layers are quantized once their
weights are loaded and on their device; the embedding, norms and head stay as they are (as
transformers does). Each matmul dequantizes its weight to the activations' dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from collie.config import ConfigError
from collie.models.layers import cast_linear


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
