"""CoLLiE's small helpers (`collie.utils.utils`), with CoLLiE's meanings; the ones that only
served its DeepSpeed pipeline (`dict_as_params`) are refused in one line."""

from __future__ import annotations

import dataclasses
import gc
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional, Union

import torch
from rich.progress import track
from torch import nn

from collie.models.registry import spec_of

__all__ = ["find_tensors", "progress", "dictToObj", "apply_to_collection", "dict_as_params", "is_static_method",
           "auto_param_call", "get_keys_to_not_convert", "concat_tensor", "stack_tensor"]


def find_tensors() -> None:
    """Print every tensor the garbage collector tracks (a memory-leak hunt)."""
    for obj in gc.get_objects():
        if torch.is_tensor(obj):
            print(type(obj).__name__, tuple(obj.size()), obj.dtype, obj.device)


def concat_tensor(tensor_list: list, dim: int = 0) -> torch.Tensor:
    """The tensors concatenated on the CPU (the list is emptied, so device memory can go)."""
    on_cpu = [t.detach().cpu() for t in tensor_list]
    tensor_list.clear()
    return torch.cat(on_cpu, dim=dim)


def stack_tensor(tensor_list: list, dim: int = 0) -> torch.Tensor:
    """The tensors stacked on the CPU (the list is emptied)."""
    on_cpu = [t.detach().cpu() for t in tensor_list]
    tensor_list.clear()
    return torch.stack(on_cpu, dim=dim)


def progress(sequence: Iterable, desc: str = "", total: Optional[int] = None, disable: bool = False, **_) -> Iterable:
    """A rich progress bar over `sequence` (CoLLiE's `progress(dataloader)`)."""
    return track(sequence, description=desc, total=total, disable=disable)


class _AttrDict(dict):
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


def dictToObj(value: Any) -> Any:  # noqa: N802 - CoLLiE's name
    """A dict (recursively) whose keys are also attributes."""
    if not isinstance(value, dict):
        return value
    return _AttrDict({key: dictToObj(item) for key, item in value.items()})


def apply_to_collection(data: Any, dtype: Union[type, tuple], function: Callable, *args: Any,
                        wrong_dtype: Union[type, tuple, None] = None, include_none: bool = True, **kwargs: Any) -> Any:
    """`function` applied to every element of type `dtype` in nested dicts, lists, tuples,
    named tuples and dataclasses; the structure is kept."""
    def apply(item: Any) -> Any:
        if isinstance(item, dtype) and (wrong_dtype is None or not isinstance(item, wrong_dtype)):
            return function(item, *args, **kwargs)
        if isinstance(item, Mapping):
            mapped = ((k, apply(v)) for k, v in item.items())
            return type(item)({k: v for k, v in mapped if include_none or v is not None})
        if isinstance(item, tuple) and hasattr(item, "_fields"):
            return type(item)(*(apply(v) for v in item))
        if isinstance(item, Sequence) and not isinstance(item, str):
            values = [apply(v) for v in item]
            return type(item)(v for v in values if include_none or v is not None)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            return dataclasses.replace(item, **{f.name: apply(getattr(item, f.name)) for f in dataclasses.fields(item)
                                                if f.init})
        return item
    return apply(data)


def dict_as_params(input_keys, output_keys):
    raise NotImplementedError("dict_as_params: it wrapped layers for DeepSpeed's pipeline (LayerSpec); collie splits "
                      "plain single-device models with torch.distributed.pipelining — set pp_size")


def is_static_method(func: Any) -> bool:
    """Whether `func` (as found in a class's __dict__) is a staticmethod."""
    return isinstance(func, staticmethod)


def auto_param_call(fn: Callable, *args: dict, signature_fn: Optional[Callable] = None,
                    mapping: Optional[dict] = None) -> Any:
    """Call `fn` with the values of the dicts `args` whose keys name its parameters (`mapping`
    renames keys first; `signature_fn` gives the signature when `fn` wraps another function)."""
    values: dict = {}
    for arg in args:
        if not isinstance(arg, dict):
            raise TypeError(f"auto_param_call: every argument must be a dict, got {type(arg).__name__}")
        values.update({(mapping or {}).get(key, key): value for key, value in arg.items()})
    parameters = inspect.signature(signature_fn or fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return fn(**values)
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in values
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ValueError(f"auto_param_call: {getattr(fn, '__name__', fn)} needs {', '.join(missing)}, "
                         f"which none of the dicts holds (keys: {', '.join(sorted(values))})")
    return fn(**{name: values[name] for name in parameters if name in values})


def get_keys_to_not_convert(model: nn.Module) -> list[str]:
    """The linear layers 4-bit quantization leaves alone: collie quantizes the decoder blocks'
    linears only, so these are the linears outside the blocks (the head)."""
    blocks = {id(block) for _, block in spec_of(model).block_items(model)}
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in blocks:
            inside.update(id(m) for m in module.modules())
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and id(module) not in inside]
