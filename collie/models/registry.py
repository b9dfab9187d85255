"""The model families collie knows, listed explicitly (no registration on import)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from collie.models.auto.spec import AUTO, is_causal_lm_type
from collie.models.chatglm.spec import CHATGLM, GLM
from collie.models.internlm.spec import INTERNLM
from collie.models.internlm2.spec import INTERNLM2
from collie.models.llama.spec import LLAMA, MISTRAL, QWEN2
from collie.models.moss.spec import MOSS
from collie.models.spec import ModelSpec

FAMILIES: list[ModelSpec] = [LLAMA, QWEN2, MISTRAL, INTERNLM, INTERNLM2, CHATGLM, GLM, MOSS]


def spec_for(hf_config) -> ModelSpec:
    """The spec of the family an HF config belongs to."""
    return spec_for_type(getattr(hf_config, "model_type", None))


def spec_for_type(model_type: Optional[str]) -> ModelSpec:
    for spec in FAMILIES:
        if model_type in spec.model_types:
            return spec
    if is_causal_lm_type(model_type):
        return AUTO  # transformers' own class: data parallel and ZeRO only
    known = sorted(t for spec in FAMILIES for t in spec.model_types)
    raise ValueError(f"model_type {model_type!r} is not supported (collie's families: {', '.join(known)}; "
                     "or any causal LM transformers ships)")


def config_class_for(model_type: Optional[str]) -> Optional[type]:
    """collie's own config class for a family transformers does not ship, else None."""
    for spec in FAMILIES:
        if model_type in spec.model_types and spec.config_cls is not None:
            return spec.config_cls
    return None


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec of a collie model (or pipeline stage), from the HF config it was built from."""
    return spec_for(model.config)


def family_with_shape(shape: str, family: Optional[str] = None) -> ModelSpec:
    """The family `init-model` writes a shape in: `family` if given, else the first that has it."""
    candidates = [spec for spec in FAMILIES if family in (None, spec.name)]
    if not candidates:
        raise ValueError(f"family: {family!r} is not one of {', '.join(spec.name for spec in FAMILIES)}")
    for spec in candidates:
        if shape in spec.shapes:
            return spec
    shapes = sorted({name for spec in candidates for name in spec.shapes})
    where = f" for family {family!r}" if family else ""
    raise ValueError(f"shape: {shape!r} is not one of {', '.join(shapes) or 'none'}{where}")
