"""Named LLaMA shapes and `init_model`, which writes a random-initialised HF directory.

The writer streams: it never builds the model, only one tensor at a time, so a 7B seed
checkpoint is written with a few GB of memory.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Optional

import torch

from collie.models.hf_io import save_hf_tensors
from collie.models.init import init_tensor

SHAPES: dict[str, dict] = {
    # vocab_size None: the tokenizer's size (rounded up to a multiple of 64).
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=352, vocab_size=None),
    "20m": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=688, vocab_size=32000),
    "100m": dict(hidden_size=640, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10,
                 intermediate_size=1728, vocab_size=32000),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
               intermediate_size=5632, vocab_size=32000),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000),
}


def bundled_tokenizer_path() -> str:
    """A 4,096-token byte-level BPE shipped with collie (see scripts/build_tokenizer.py)."""
    return str(resources.files("collie") / "assets" / "tokenizer")


def shape_config(shape: str, tokenizer, **overrides):
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"shape: {shape!r} is not one of {', '.join(SHAPES)}")
    fields = dict(SHAPES[shape])
    needed = -(-len(tokenizer) // 64) * 64
    fields["vocab_size"] = max(fields["vocab_size"] or 0, needed)
    fields.update(overrides)
    return LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **fields)


def init_model(shape: str, out_dir: str, tokenizer_path: Optional[str] = None, seed: int = 0,
               dtype: torch.dtype = torch.float32, init_method: str = "normal") -> str:
    """Write config.json, random weights and the tokenizer of a named shape to `out_dir`."""
    from transformers import AutoTokenizer

    from collie.models.base import family_of, save_hf_config
    from collie.models.llama import LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or bundled_tokenizer_path())
    hf_config = shape_config(shape, tokenizer)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(hf_config)
    adapter = family_of(hf_config)[1]
    std = hf_config.initializer_range
    tensors = ((adapter.to_hf(name), init_tensor(name, tuple(p.shape), seed, std, init_method, dtype))
               for name, p in skeleton.named_parameters())
    os.makedirs(out_dir, exist_ok=True)
    save_hf_tensors(out_dir, tensors)
    save_hf_config(hf_config, out_dir, adapter, dtype)
    tokenizer.save_pretrained(out_dir)
    return out_dir
