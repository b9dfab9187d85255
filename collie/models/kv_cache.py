"""A preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, [batch, kv_heads, max_len, head_dim] each.

    Preallocating avoids a torch.cat per generated token; `length` is how many positions
    are filled. The model writes one layer at a time and calls `advance` once per forward.
    Each layer's buffers are allocated at its first write, from the keys it is given, so
    the local head count under tensor parallel and the compute dtype need no bookkeeping.
    """

    def __init__(self, max_len: int) -> None:
        # Keyed by layer index: a pipeline stage holds only some of the layers.
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.max_len = max_len
        self.length = 0
        # What a model derives from the prompt and needs again at every later step (ChatGLM v1:
        # where each prompt's answer starts).
        self.model_state: dict = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k/v for `layer`; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        if layer not in self.keys:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
