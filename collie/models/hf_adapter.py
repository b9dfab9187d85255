"""A family's HF checkpoint format ↔ our parameters, given as tables.

Most tensors map one to one by name: a prefix outside the decoder blocks (`edges`), or a prefix
inside one (`block`, under our `layers.N.` and the checkpoint's `hf_block`); a name no table
mentions is the same on both sides. Some families store several of our parameters in one
checkpoint tensor (a fused q/k/v matrix, gate and up projections stacked): a `Fused` entry names
it and says how its rows interleave, so `split` cuts it into our parameters on load, and
`hf_layout` + `fuse` put them back together on save. Loading and saving stream one checkpoint
tensor at a time either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch

_OUR_BLOCK = re.compile(r"layers\.(\d+)\.(.*)", re.DOTALL)


@dataclass(frozen=True)
class Fused:
    """One checkpoint tensor of a block that holds several of ours, stacked by rows.

    The rows come in `groups` equal groups (a fused q/k/v kept per head, or per key/value head);
    each group holds every part's rows in turn, part i taking `shares[i]` units of rows.
    `layout(hf_config) -> (groups, shares)`: a plain [a | b | c] stack is one group whose
    shares are the parts' row counts (or any multiples of them)."""

    theirs: str  # name prefix inside a block, e.g. "attention.wqkv."
    ours: tuple[str, ...]  # our name prefixes inside a block, in the checkpoint's row order
    layout: Callable[[Any], tuple[int, tuple[int, ...]]]


class HFAdapter:
    """Our names ↔ a checkpoint's, by the tables below (all empty: the names are the same)."""

    # The `architectures` entry written into config.json.
    architecture: str = ""
    # (ours, theirs) name prefixes outside the blocks; the first that matches applies.
    edges: list[tuple[str, str]] = []
    # The checkpoint's prefix of block N ("" : blocks are named as the edges say).
    hf_block: str = ""
    # (ours, theirs) name prefixes inside a block.
    block: list[tuple[str, str]] = []
    fused: list[Fused] = []
    # Checkpoint entries that are derived state, not weights (name suffixes).
    ignored: tuple[str, ...] = ()

    def to_hf_name(self, name: str) -> str:
        block = _OUR_BLOCK.fullmatch(name)
        if block and self.hf_block:
            return self.hf_block.format(block[1]) + _swap(block[2], self._block_table(), reverse=False)
        return _swap(name, self.edges, reverse=False)

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        """Our name of a checkpoint tensor (None: not a weight, e.g. a cached rotary table)."""
        if self.ignored and hf_name.endswith(self.ignored):
            return None
        block = self._hf_block_match(hf_name)
        if block:
            return f"layers.{block[1]}." + _swap(block[2], self._block_table(), reverse=True)
        return _swap(hf_name, self.edges, reverse=True)

    def split(self, hf_name: str, tensor: torch.Tensor, hf_config) -> list[tuple[str, torch.Tensor]]:
        """Our (name, tensor) pairs held in one checkpoint tensor (views where the layout allows)."""
        name = self.from_hf_name(hf_name)
        found = self._fused_of_ours(name) if name is not None else None
        if found is None or found[1] is None:  # one to one (or not a weight)
            return [] if name is None else [(name, tensor)]
        fused, prefix, rest = found
        groups, shares = fused.layout(hf_config)
        grouped = tensor.reshape(groups, -1, *tensor.shape[1:])
        unit = grouped.shape[1] // sum(shares)
        pieces = grouped.split([share * unit for share in shares], dim=1)
        return [(prefix + ours + rest, piece.reshape(-1, *tensor.shape[1:]))
                for ours, piece in zip(fused.ours, pieces)]

    def hf_layout(self, names: Iterable[str], hf_config) -> list[tuple[str, list[str]]]:
        """The checkpoint's tensors in writing order: (HF name, our names it is made of)."""
        layout = []
        for name in names:
            found = self._fused_of_ours(name)
            if found is None:
                layout.append((self.to_hf_name(name), [name]))
            elif found[1] is not None:  # the first part: the checkpoint tensor goes here
                fused, prefix, rest = found
                layout.append((self.to_hf_name(name), [prefix + ours + rest for ours in fused.ours]))
        return layout

    def fuse(self, hf_name: str, parts: list[torch.Tensor], hf_config) -> torch.Tensor:
        """The checkpoint tensor `hf_name` from our parts (in `hf_layout`'s order)."""
        if len(parts) == 1:
            return parts[0]
        found = self._fused_of_ours(self.from_hf_name(hf_name) or "")
        if found is None:
            raise NotImplementedError(f"{type(self).__name__} declares {hf_name} fused but does not fuse it")
        groups, _ = found[0].layout(hf_config)
        rest = parts[0].shape[1:]
        return torch.cat([part.reshape(groups, -1, *rest) for part in parts], dim=1).reshape(-1, *rest)

    # -- tables -----------------------------------------------------------------
    def _block_table(self) -> list[tuple[str, str]]:
        # A fused tensor is named, on our side, after its first part.
        return self.block + [(fused.ours[0], fused.theirs) for fused in self.fused]

    def _hf_block_match(self, hf_name: str) -> Optional[re.Match]:
        if not self.hf_block:
            return None
        return re.fullmatch(re.escape(self.hf_block).replace(r"\{\}", r"(\d+)") + "(.*)", hf_name, re.DOTALL)

    def _fused_of_ours(self, name: str):
        """(Fused entry, `layers.N.`, the rest of the name) when `name` is a part of a fused
        tensor; the prefix is None for a part other than the first."""
        block = _OUR_BLOCK.fullmatch(name)
        if not block or not self.fused:
            return None
        for fused in self.fused:
            for i, ours in enumerate(fused.ours):
                if block[2].startswith(ours):
                    prefix = f"layers.{block[1]}." if i == 0 else None
                    return fused, prefix, block[2][len(ours):]
        return None


class TransformersLayoutAdapter(HFAdapter):
    """transformers' usual causal-LM names (LLaMA's and most others'): ours with a `model.`
    prefix, except the head. Our module names are otherwise HF's, so PEFT `target_modules`
    such as `q_proj` mean the same thing."""

    edges = [("lm_head.", "lm_head."), ("", "model.")]
    hf_block = "model.layers.{}."
    ignored = ("rotary_emb.inv_freq",)


def _swap(name: str, table: list[tuple[str, str]], reverse: bool) -> str:
    """`name` with its prefix from `table` replaced (ours → theirs, or back with `reverse`);
    a name the table does not mention is unchanged."""
    for ours, theirs in table:
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if name.startswith(old):
            return new + name[len(old):]
    return name
