"""Store parameters in one dtype, compute in another, one submodule at a time.

LOMO's memory saving rests on keeping parameters in bf16 with no fp32 master copy. On CPU,
bf16 matmuls are tens of times slower than fp32, so there we keep bf16 storage but compute
in fp32: each decoder layer (and the embedding, final norm and head) upcasts its own
parameters just for its forward. Only one layer's fp32 copy is alive at a time, and under
activation checkpointing the copy is made inside the checkpointed region, so backward
recomputes it instead of keeping it. The cast is an autograd op, so gradients reach the
stored parameters in their own dtype and `register_post_accumulate_grad_hook` hooks on them
(LOMO/AdaLomo's update path) fire as usual.

The submodules keep their identity and parameter names (state_dict, HF export and DCP see
no change); only their class becomes a thin subclass whose `forward` does the casting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_TOP_LEVEL = ("embed_tokens", "norm", "lm_head")


def apply_compute_dtype(model: nn.Module, compute_dtype: torch.dtype) -> None:
    """Make `model`'s layers, embedding, final norm and head compute in `compute_dtype`.

    Call it on the single-device model after tensor parallel and before data parallel.
    Layers already wrapped for activation checkpointing are handled by casting inside the
    wrapper, so the upcast copies are recomputed in backward either way. A stage's missing
    submodules (None) are skipped; nothing happens when every parameter already has
    `compute_dtype`.
    """
    if all(p.dtype == compute_dtype for p in model.parameters()):
        return
    # The cast must run inside the checkpointed region: outside it, recomputation in
    # backward would read the parameters back in their storage dtype.
    layers = [getattr(layer, "_checkpoint_wrapped_module", layer) for layer in model.layers.values()]
    for module in [getattr(model, name, None) for name in _TOP_LEVEL] + layers:
        if module is None:
            continue
        if isinstance(module, _ComputeCast):
            module._compute_dtype = compute_dtype
            continue
        module.__class__ = _compute_cast_class(type(module))
        module._compute_dtype = compute_dtype


class _ComputeCast(nn.Module):
    """Marker base of the generated subclasses (lets a second call just change the dtype)."""

    _compute_dtype: torch.dtype


@functools.cache
def _compute_cast_class(cls: type) -> type:
    # One generated class per original class, so all layers share it and isinstance(…, cls)
    # still holds for code that checks the layer type.
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dtype = self._compute_dtype
        args = tuple(_cast_floating(a, dtype) for a in args)
        kwargs = {k: _cast_floating(v, dtype) for k, v in kwargs.items()}
        with _parameters_cast(self, dtype):
            return cls.forward(self, *args, **kwargs)

    return type(f"{cls.__name__}ComputeCast", (cls, _ComputeCast), {"forward": forward})


def _cast_floating(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


@contextlib.contextmanager
def _parameters_cast(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Within the block, every parameter of `module`'s tree reads as its `dtype` cast.

    The casts go straight into `_parameters` (as `torch.func.functional_call` does) rather
    than through `functional_call` itself, which would call the module again and so run its
    own hooks (tensor-parallel input/output redistribution, FSDP) a second time. A tensor
    shared by two submodules is cast once so it stays shared.
    """
    casts: dict[int, torch.Tensor] = {}
    saved = []
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is None or param.dtype == dtype:
                continue
            cast = casts.get(id(param))
            if cast is None:
                cast = casts[id(param)] = param.to(dtype)
            saved.append((sub, name, param))
            sub._parameters[name] = cast
    try:
        yield
    finally:
        # Restored even when checkpoint recomputation stops the forward early by raising.
        for sub, name, param in saved:
            sub._parameters[name] = param
