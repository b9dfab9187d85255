"""A family's HF checkpoint format ↔ our parameters.

Most tensors map one to one by name. Some families store several of our parameters in one
checkpoint tensor (a fused q/k/v matrix, gate and up projections stacked): `split` cuts such
a tensor into our parameters on load, and `hf_layout` + `fuse` put them back together on save.
Loading and saving stream one checkpoint tensor at a time either way.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import torch


class HFAdapter:
    # The `architectures` entry written into config.json.
    architecture: str = ""

    def to_hf_name(self, name: str) -> str:
        raise NotImplementedError

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        """Our name of a checkpoint tensor (None: not a weight, e.g. a cached rotary table)."""
        raise NotImplementedError

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        """Our (name, tensor) pairs held in one checkpoint tensor (views, not copies)."""
        name = self.from_hf_name(hf_name)
        return [] if name is None else [(name, tensor)]

    def hf_layout(self, names: Iterable[str], hf_config) -> list[tuple[str, list[str]]]:
        """The checkpoint's tensors in writing order: (HF name, our names it is made of)."""
        return [(self.to_hf_name(name), [name]) for name in names]

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        """The checkpoint tensor `hf_name` from our parts (in `hf_layout`'s order)."""
        if len(parts) != 1:
            raise NotImplementedError(f"{type(self).__name__} declares {hf_name} fused but does not fuse it")
        return parts[0]


class BlockTableAdapter(HFAdapter):
    """A checkpoint format given as tables: name prefixes of the edge modules (ours, theirs), of
    the inside of a block (under `layers.N.` ↔ `hf_block.format(N)`), checkpoint entries that are
    not weights (`ignored` suffixes: cached buffers), and one fused q/k/v tensor per block
    (`fused_qkv`, inside a block) whose rows are `qkv_groups(hf_config)` groups, each holding
    its rows of the projections in `qkv_order`."""

    edges: list[tuple[str, str]] = []
    block: list[tuple[str, str]] = []
    hf_block: str = ""
    ignored: tuple[str, ...] = ()
    fused_qkv: str = ""
    qkv_order: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")

    def qkv_groups(self, hf_config) -> int:
        raise NotImplementedError

    def to_hf_name(self, name: str) -> str:
        block = re.match(r"layers\.(\d+)\.(.*)", name)
        if block:
            return self.hf_block.format(block[1]) + _swap(block[2], self.block, reverse=False)
        return _swap(name, self.edges, reverse=False)

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.endswith(self.ignored):
            return None
        block = re.match(re.escape(self.hf_block).replace(r"\{\}", r"(\d+)") + "(.*)", hf_name)
        if block:
            inner = _swap(block[2], self.block, reverse=True)
            return f"layers.{block[1]}.{inner}" if inner is not None else None
        return _swap(hf_name, self.edges, reverse=True)

    def _fused_parts(self, hf_name: str) -> Optional[list[str]]:
        block = re.match(re.escape(self.hf_block).replace(r"\{\}", r"(\d+)") + re.escape(self.fused_qkv) + "(.*)",
                         hf_name)
        if not self.fused_qkv or not block:
            return None
        return [f"layers.{block[1]}.self_attn.{proj}.{block[2]}" for proj in self.qkv_order]

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        parts = self._fused_parts(hf_name)
        if parts is None:
            return super().split(hf_name, tensor, hf_config)
        grouped = tensor.reshape(self.qkv_groups(hf_config), len(parts), -1, *tensor.shape[1:])
        return [(name, grouped[:, i].reshape(-1, *tensor.shape[1:])) for i, name in enumerate(parts)]

    def hf_layout(self, names, hf_config) -> list[tuple[str, list[str]]]:
        layout, names = [], list(names)
        for name in names:
            block = re.match(r"layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj)\.(.*)", name)
            if not self.fused_qkv or not block:
                layout.append((self.to_hf_name(name), [name]))
            elif block[2] == self.qkv_order[0]:
                hf_name = self.hf_block.format(block[1]) + self.fused_qkv + block[3]
                layout.append((hf_name, self._fused_parts(hf_name)))
        return layout

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        if self._fused_parts(hf_name) is None:
            return super().fuse(hf_name, parts, hf_config)
        rest = parts[0].shape[1:]
        groups = self.qkv_groups(hf_config)
        return torch.cat([part.reshape(groups, 1, -1, *rest) for part in parts], dim=1).reshape(-1, *rest)


def _swap(name: str, table: list[tuple[str, str]], reverse: bool) -> Optional[str]:
    """`name` with its prefix from `table` replaced (ours → theirs, or back with `reverse`)."""
    for ours, theirs in table:
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if name.startswith(old):
            return new + name[len(old):]
    return None
