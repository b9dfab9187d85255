"""`collie init-model`: a random-initialised model of a named shape, written as an HF directory.

The writer streams: it never builds the model, only one tensor at a time, so a 7B seed
checkpoint is written with a few GB of memory.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Optional

import torch

from collie.models.hf_writer import write_hf_model
from collie.models.init import init_tensor
from collie.models.registry import family_with_shape


def bundled_tokenizer_path() -> str:
    """A 4,096-token byte-level BPE shipped with collie (see scripts/build_tokenizer.py)."""
    return str(resources.files("collie") / "assets" / "tokenizer")


def shape_config(shape: str, tokenizer, family: Optional[str] = None, **overrides):
    """The HF config of a named shape (of `family`, default LLaMA); a vocabulary of None becomes
    the tokenizer's size, rounded up to a multiple of 64."""
    spec = family_with_shape(shape, family)
    fields = dict(spec.shapes[shape])
    needed = -(-len(tokenizer) // 64) * 64
    fields["vocab_size"] = max(fields["vocab_size"] or 0, needed)
    fields.update(overrides)
    return spec.shape_config(fields, tokenizer)


def init_model(shape: str, out_dir: str, tokenizer_path: Optional[str] = None, seed: int = 0,
               dtype: torch.dtype = torch.float32, init_method: str = "normal", family: Optional[str] = None) -> str:
    """Write config.json, random weights (in the family's own checkpoint layout) and the
    tokenizer of a named shape to `out_dir`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or bundled_tokenizer_path())
    hf_config = shape_config(shape, tokenizer, family)
    spec = family_with_shape(shape, family)
    with torch.device("meta"):
        skeleton = spec.model_cls(hf_config)
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    std = float(getattr(hf_config, "initializer_range", 0.02))  # HF's default where a format has none
    os.makedirs(out_dir, exist_ok=True)
    write_hf_model(out_dir, hf_config, spec, skeleton.hf_state_names(),
                   lambda name: init_tensor(name, shapes[name], seed, std, init_method, dtype), dtype,
                   tokenizer=tokenizer)
    return out_dir
