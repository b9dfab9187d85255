"""A family's HF checkpoint format ↔ our parameters.

Most tensors map one to one by name. Some families store several of our parameters in one
checkpoint tensor (a fused q/k/v matrix, gate and up projections stacked): `split` cuts such
a tensor into our parameters on load, and `hf_layout` + `fuse` put them back together on save.
Loading and saving stream one checkpoint tensor at a time either way.
"""

from __future__ import annotations

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
