"""A paged KV cache: fixed-size blocks of keys and values shared by every sequence the server
decodes, a block table per sequence, and full blocks found again by the tokens they hold
(prefix reuse).

Blocks are reference counted. A full block is immutable and named by a hash of its tokens and
of every token before it, so two sequences that begin alike — a shared system prompt, the `n`
completions of one request — hold the same blocks; a sequence only ever writes into a block of
its own (its last, partial one), so no block is written while shared. A block whose count falls
to zero keeps its contents and its name until it is needed for something else (least recently
freed first), so a prefix seen a moment ago is found again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch


class NoFreeBlock(RuntimeError):
    """Every block is held by a running sequence."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache: {num_blocks} blocks of {block_size} tokens; need at least one of one")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.refs = [0] * num_blocks
        # Unheld blocks, least recently freed first (their contents may still be found by name).
        self.free: OrderedDict[int, None] = OrderedDict((block, None) for block in range(num_blocks))
        self.named: dict[int, int] = {}      # prefix hash -> block
        self.name_of: dict[int, int] = {}    # block -> prefix hash
        # Per layer: keys and values of every block, [num_blocks * block_size, kv_heads, head_dim],
        # made at a layer's first write from the keys it is given (local heads, compute dtype).
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free)

    def allocate(self) -> int:
        if not self.free:
            raise NoFreeBlock("every KV cache block is in use")
        block, _ = self.free.popitem(last=False)
        name = self.name_of.pop(block, None)
        if name is not None:
            del self.named[name]
        self.refs[block] = 1
        return block

    def lookup(self, name: int) -> Optional[int]:
        """Hold the full block named `name` if it is cached (None if not)."""
        block = self.named.get(name)
        if block is not None:
            if self.refs[block] == 0:
                del self.free[block]
            self.refs[block] += 1
        return block

    def name(self, block: int, name: int) -> None:
        """`block` is full and holds the tokens `name` stands for: findable from now on."""
        if name not in self.named and block not in self.name_of:
            self.named[name], self.name_of[block] = block, name

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free[block] = None

    def storage(self, layer: int, like_k: torch.Tensor, like_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in self.keys:
            # Zeros, not empty: padding positions read whatever a slot holds, and attention
            # weighs them by exactly 0, which a NaN left in uninitialised memory would defeat.
            shape = (self.num_blocks * self.block_size, like_k.shape[1], like_k.shape[3])
            self.keys[layer] = like_k.new_zeros(shape)
            self.values[layer] = like_v.new_zeros((*shape[:2], like_v.shape[3]))
        return self.keys[layer], self.values[layer]


def slots(blocks: list[int], start: int, stop: int, block_size: int) -> list[int]:
    """Flat storage slots of positions [start, stop) of a sequence with block table `blocks`."""
    return [blocks[p // block_size] * block_size + p % block_size for p in range(start, stop)]


class PagedForward:
    """What a model receives as `kv_cache` for one forward over several sequences, each with its
    own number of cached tokens (`cached`) and of new ones (`new`, left-padded to the widest):
    its keys and values are gathered from the blocks into rows left-padded to the longest cache,
    which is the layout of a left-padded batch — the attention mask the engine passes marks
    both paddings — and the new tokens' keys and values are written into their blocks."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], cached: list[int], new: list[int],
                 device: torch.device) -> None:
        self.pool = pool
        self.length = max(cached)   # the shared past width, as the model reads it
        self.width = max(new)
        self.model_state: dict = {}
        size = pool.block_size
        read = [[0] * (self.length - c) + slots(table, 0, c, size) for table, c in zip(tables, cached)]
        self._read = torch.tensor(read, dtype=torch.long, device=device).reshape(len(tables), self.length)
        rows, columns, written = [], [], []
        for row, (table, c, n) in enumerate(zip(tables, cached, new)):
            rows += [row] * n
            columns += range(self.width - n, self.width)
            written += slots(table, c, c + n, size)
        self._rows, self._columns, self._written = (torch.tensor(x, dtype=torch.long, device=device)
                                                    for x in (rows, columns, written))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [rows, kv_heads, width, head_dim] of the new tokens → the cached ones before them."""
        keys, values = self.pool.storage(layer, k, v)
        k_new, v_new = k.transpose(1, 2), v.transpose(1, 2)   # [rows, width, heads, dim]
        keys[self._written] = k_new[self._rows, self._columns]
        values[self._written] = v_new[self._rows, self._columns]
        k_all = torch.cat([keys[self._read], k_new], dim=1)
        v_all = torch.cat([values[self._read], v_new], dim=1)
        return k_all.transpose(1, 2), v_all.transpose(1, 2)

    def advance(self, n: int) -> None:
        """The engine moves each sequence's cached count itself."""
