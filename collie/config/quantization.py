"""`quantization_config` read into collie's 4-bit settings (QLoRA); what collie cannot honour is
refused by name. The 4-bit layers themselves are in `collie.peft.quantize`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from collie.config.errors import ConfigError

QUANT_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class QuantSettings:
    quant_type: str = "nf4"
    double_quant: bool = False


def quant_settings(source: Any) -> Optional[QuantSettings]:
    """The 4-bit settings of transformers' `BitsAndBytesConfig` or a mapping of its fields
    (None: no quantization)."""
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
