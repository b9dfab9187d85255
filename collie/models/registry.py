"""The model families collie knows, listed explicitly (no registration on import).

It imports the families' specs only, never their model classes (a spec names its class by
path), so `collie.models.base` looks families up here and the classes can subclass it."""

from __future__ import annotations

from typing import Optional

from torch import nn

from collie.models.auto.spec import AUTO, is_causal_lm_type
from collie.models.chatglm.spec import CHATGLM_V1
from collie.models.chatglm2.spec import CHATGLM, GLM
from collie.models.internlm.spec import INTERNLM
from collie.models.internlm2.spec import INTERNLM2
from collie.models.llama.spec import LLAMA, MISTRAL, QWEN2
from collie.models.moss.spec import MOSS
from collie.models.spec import ModelSpec

# A family with `accepts` goes before the others of its model type.
FAMILIES: list[ModelSpec] = [LLAMA, QWEN2, MISTRAL, INTERNLM, INTERNLM2, CHATGLM_V1, CHATGLM, GLM, MOSS]


def spec_for(hf_config) -> ModelSpec:
    """The spec of the family an HF config (object, or config.json's dict) belongs to."""
    model_type = hf_config.get("model_type") if isinstance(hf_config, dict) else getattr(hf_config, "model_type", None)
    return spec_for_type(model_type, hf_config)


def spec_for_type(model_type: Optional[str], hf_config=None) -> ModelSpec:
    for spec in FAMILIES:
        if model_type in spec.model_types and (spec.accepts is None or spec.accepts(hf_config)):
            return spec
    if is_causal_lm_type(model_type):
        return AUTO  # transformers' own class: data parallel and ZeRO only
    known = sorted(t for spec in FAMILIES for t in spec.model_types)
    raise ValueError(f"model_type {model_type!r} is not supported (collie's families: {', '.join(known)}; "
                     "or any causal LM transformers ships)")


def config_class_for(fields: dict) -> Optional[type]:
    """collie's own config class for config.json's `fields`, if transformers does not ship the family."""
    return spec_for(fields).config_cls


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
