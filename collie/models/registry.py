"""The model families collie knows, listed explicitly (no registration on import)."""

from __future__ import annotations

from torch import nn

from collie.models.llama.spec import LLAMA, QWEN2
from collie.models.spec import ModelSpec

FAMILIES: list[ModelSpec] = [LLAMA, QWEN2]


def spec_for(hf_config) -> ModelSpec:
    """The spec of the family an HF config belongs to."""
    model_type = getattr(hf_config, "model_type", None)
    for spec in FAMILIES:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for spec in FAMILIES for t in spec.model_types)
    raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(known)})")


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec of a collie model (or pipeline stage), from the HF config it was built from."""
    return spec_for(model.config)


def family_with_shape(shape: str) -> ModelSpec:
    for spec in FAMILIES:
        if shape in spec.shapes:
            return spec
    shapes = [name for spec in FAMILIES for name in spec.shapes]
    raise ValueError(f"shape: {shape!r} is not one of {', '.join(shapes)}")
