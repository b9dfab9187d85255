"""The one HF-directory writer: config.json, safetensors shards (+ index) and the tokenizer.

Every export goes through `write_hf_model`: a model on one process, any parallel layout, a
pipeline stage, a DCP checkpoint (`collie convert`) or a random initialisation (`collie
init-model`). Callers differ only in how they fetch one of our tensors by name; the family's
adapter turns our tensors into checkpoint tensors (fusing where the format fuses), and they
are written one at a time, so no process ever holds a second copy of the model.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch

from collie.models.hf_io import DEFAULT_MAX_SHARD_BYTES, save_hf_tensors


def write_hf_model(path: str, hf_config, spec, names: list[str], fetch: Callable[[str], Optional[torch.Tensor]],
                   dtype: torch.dtype, is_writer: bool = True, tokenizer=None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """Write the model whose tensors are `names` (ours), each obtained by `fetch(name)`.

    Every process calls this with the same names in the same order, so `fetch` may run
    collectives (gathering shards, sending a pipeline stage's tensor); only `is_writer` writes.
    """
    layout = spec.adapter.hf_layout(names, hf_config)
    if not is_writer:
        for _, parts in layout:
            for name in parts:
                fetch(name)
        return
    tensors = ((hf_name, spec.adapter.fuse(hf_name, [fetch(name).to(dtype) for name in parts], hf_config))
               for hf_name, parts in layout)
    save_hf_tensors(path, tensors, max_shard_bytes)
    save_hf_config(hf_config, path, spec.adapter.architecture, dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save_hf_config(hf_config, path: str, architecture: str, dtype: torch.dtype) -> None:
    """config.json naming the architecture and dtype; the caller's config object is not changed."""
    hf_config = copy.deepcopy(hf_config)
    hf_config.architectures = [architecture]
    # transformers 5 names it `dtype`; 4.x reads `torch_dtype`.
    setattr(hf_config, "dtype" if "dtype" in hf_config.to_dict() else "torch_dtype", dtype)
    hf_config.save_pretrained(path)
