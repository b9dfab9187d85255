"""A paged KV cache: fixed-size blocks of keys and values shared by every sequence the server
decodes, a block table per sequence, and full blocks found again by the tokens they hold
(prefix reuse).

Blocks are reference counted. A full block is immutable and named by a digest of its tokens and
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
import torch.nn.functional as F

from collie.models.common.attention_layout import CacheLayout


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
        self.named: dict[bytes, int] = {}      # prefix digest -> block
        self.name_of: dict[int, bytes] = {}    # block -> prefix digest
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

    def lookup(self, name: bytes) -> Optional[int]:
        """Hold the full block named `name` if it is cached (None if not)."""
        block = self.named.get(name)
        if block is not None:
            if self.refs[block] == 0:
                del self.free[block]
            self.refs[block] += 1
        return block

    def name(self, block: int, name: bytes) -> None:
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


class _Group:
    """Sequences attended in one SDPA call: a run of decoding sequences (one new token each;
    their keys right-aligned to the longest, [rows, span]), or one sequence with several new
    tokens (a prompt chunk). Their new tokens are `tokens` of the forward's row."""

    def __init__(self, tables: list[list[int]], cached: list[int], new: list[int], tokens: slice, block_size: int,
                 device: torch.device) -> None:
        totals = [c + n for c, n in zip(cached, new)]
        self.rows, self.span, self.tokens = len(tables), max(totals), tokens
        self.cached, self.new = cached, new
        read = []
        for table, total in zip(tables, totals):
            held = slots(table, 0, total, block_size)
            read += held[:1] * (self.span - total) + held   # padding reads a real slot: finite, weighed 0
        self.read = torch.tensor(read, dtype=torch.long, device=device)
        self.mask: Optional[torch.Tensor] = None
        self.is_causal = False

    def use_window(self, sliding_window: Optional[int], device: torch.device) -> None:
        window = sliding_window is not None and sliding_window < self.span
        k = torch.arange(self.span, device=device)
        if self.rows > 1 or self.new[0] == 1:  # decoding: each row's one query is its last position
            if self.rows == 1 and not window:
                self.mask = None  # one query over all of its keys
                return
            starts = torch.tensor([self.span - c - n for c, n in zip(self.cached, self.new)], device=device)
            allowed = k[None, :] >= starts[:, None]
            if window:
                allowed = allowed & (self.span - 1 - k < sliding_window)[None, :]
            self.mask = allowed[:, None, None, :]
            return
        if self.cached[0] == 0 and not window:
            self.is_causal = True  # a whole prompt: plain causal attention
            return
        q = torch.arange(self.cached[0], self.span, device=device)[:, None]
        allowed = k[None, :] <= q
        if window:
            allowed = allowed & (q - k[None, :] < sliding_window)
        self.mask = allowed

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """q: [1, heads, tokens, head_dim] of the whole row → this group's output, [1, heads, its tokens, head_dim]."""
        k = keys.index_select(0, self.read).view(self.rows, self.span, *keys.shape[1:]).transpose(1, 2)
        v = values.index_select(0, self.read).view(self.rows, self.span, *values.shape[1:]).transpose(1, 2)
        repeats = q.shape[1] // k.shape[1]
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        q = q[:, :, self.tokens]
        if self.rows > 1:  # one query per row: [1, heads, rows, dim] → [rows, heads, 1, dim]
            q = q[0].transpose(0, 1).unsqueeze(2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.is_causal)
        return out.squeeze(2).transpose(0, 1)[None] if self.rows > 1 else out


class PagedForward(CacheLayout):
    """What a model receives as `kv_cache` for one forward over several sequences, each with its
    own number of cached tokens (`cached`) and of new ones (`new`). The new tokens are laid end
    to end in one row, so the linear layers see no padding whether a sequence brings one token
    (decoding) or a prompt chunk (prefill). Each layer writes their keys and values into their
    blocks, then attends in groups: every run of decoding sequences in one SDPA call over their
    keys read back from the blocks, each prompt chunk in a call of its own — so no decoding
    row is padded to a prompt's width."""

    def __init__(self, pool: BlockPool, tables: list[list[int]], cached: list[int], new: list[int],
                 device: torch.device) -> None:
        self.pool, self.device = pool, device
        size = pool.block_size
        written = []
        for table, c, n in zip(tables, cached, new):
            written += slots(table, c, c + n, size)
        self._written = torch.tensor(written, dtype=torch.long, device=device)
        self._groups: list[_Group] = []
        row, token = 0, 0
        while row < len(tables):
            end = row + 1
            if new[row] == 1:
                while end < len(tables) and new[end] == 1:
                    end += 1
            width = sum(new[row:end])
            self._groups.append(_Group(tables[row:end], cached[row:end], new[row:end], slice(token, token + width),
                                       size, device))
            row, token = end, token + width
        self.model_state: dict = {}

    def use_window(self, sliding_window: Optional[int]) -> None:
        for group in self._groups:
            group.use_window(sliding_window, self.device)

    def attend_new(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.pool.storage(layer, k, v)
        keys.index_copy_(0, self._written, k[0].transpose(0, 1))
        values.index_copy_(0, self._written, v[0].transpose(0, 1))
        outs = [group.attend(q, keys, values) for group in self._groups]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
