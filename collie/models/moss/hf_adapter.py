"""MOSS's checkpoint names ↔ ours.

MOSS (as CodeGen) computes q, k and v with one `attn.qkv_proj` matrix in 4 model-parallel
groups: its rows, viewed as (4, 3, hidden / 4, hidden), hold in each group the group's query
rows, then value rows, then key rows (q | v | k). Loading splits it into q/k/v projections whose
heads keep MOSS's order (so tensor parallel shards whole heads); saving puts the groups back.
Buffers in the checkpoint (a cached causal mask, `masked_bias`) are not weights.
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from collie.models.hf_adapter import HFAdapter
from collie.models.moss.model import MP_GROUPS

# (ours, MOSS's) name prefixes: of the model, and inside a block (layers.N. ↔ transformer.h.N.).
_EDGES = [("embed_tokens.", "transformer.wte."), ("norm.", "transformer.ln_f."), ("lm_head.", "lm_head.")]
_BLOCK = [("input_layernorm.", "ln_1."), ("self_attn.o_proj.", "attn.out_proj."), ("mlp.", "mlp.")]
_BUFFERS = ("attn.causal_mask", "attn.bias", "attn.masked_bias")
_ORDER = ("q_proj", "v_proj", "k_proj")  # the order inside each group


def _swap(name: str, table: list[tuple[str, str]], reverse: bool) -> Optional[str]:
    for ours, theirs in table:
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if name.startswith(old):
            return new + name[len(old):]
    return None


class MossHFAdapter(HFAdapter):
    architecture = "MossForCausalLM"

    def to_hf_name(self, name: str) -> str:
        block = re.match(r"layers\.(\d+)\.(.*)", name)
        if block:
            return f"transformer.h.{block[1]}." + _swap(block[2], _BLOCK, reverse=False)
        return _swap(name, _EDGES, reverse=False)

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.endswith(_BUFFERS):
            return None
        block = re.match(r"transformer\.h\.(\d+)\.(.*)", hf_name)
        if block:
            inner = _swap(block[2], _BLOCK, reverse=True)
            return f"layers.{block[1]}.{inner}" if inner is not None else None
        return _swap(hf_name, _EDGES, reverse=True)

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        if ".attn.qkv_proj." not in hf_name:
            return super().split(hf_name, tensor, hf_config)
        groups = tensor.reshape(MP_GROUPS, 3, -1, *tensor.shape[1:])
        prefix = self.from_hf_name(hf_name.replace("attn.qkv_proj.", "attn.out_proj.")).replace("o_proj", "{}", 1)
        return [(prefix.format(proj), groups[:, i].reshape(-1, *tensor.shape[1:])) for i, proj in enumerate(_ORDER)]

    def hf_layout(self, names, hf_config) -> list[tuple[str, list[str]]]:
        layout = []
        for name in names:
            if ".self_attn.q_proj." in name:
                fused = self.to_hf_name(name.replace("q_proj", "o_proj", 1)).replace("out_proj", "qkv_proj", 1)
                layout.append((fused, [name.replace("q_proj", proj) for proj in _ORDER]))
            elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
                layout.append((self.to_hf_name(name), [name]))
        return layout

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        if ".attn.qkv_proj." not in hf_name:
            return super().fuse(hf_name, parts, hf_config)
        rest = parts[0].shape[1:]
        grouped = [part.reshape(MP_GROUPS, 1, -1, *rest) for part in parts]
        return torch.cat(grouped, dim=1).reshape(-1, *rest)
