"""Continuous batching over the paged KV cache: at every iteration finished sequences leave,
waiting requests join (their prompts prefilled in chunks of at most `max_num_tokens` tokens per
iteration), and every running sequence decodes one token.

Iteration: drop cancelled sequences; admit whole jobs while the rows fit `max_batch_size`; one
forward that feeds every decoding sequence its last token and the joining ones a chunk of their
prompt (first reusing the cached full blocks that begin their tokens), laid end to end in one row
(`PagedForward`). When a sequence needs a block and none is free, the newest running sequence is
preempted: its blocks are released and it is prefilled again later from its prompt and what it
generated — a request never fails for memory.

Every rank of a parallel model runs the same forwards: rank 0 decides, the others receive each
forward's plan (`Lockstep.send_plan`) and run `paged_forward` on their own blocks.
"""

from __future__ import annotations

import array
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch

from collie.dtypes import at_least_fp32
from collie.serve.kv_blocks import BlockPool, NoFreeBlock, PagedForward
from collie.serve.serve_metrics import ServeMetrics
from collie.tensors import whole


@dataclass
class Plan:
    """One forward: each sequence's block table, its cached token count and the tokens it feeds."""
    tables: list[list[int]]
    cached: list[int]
    inputs: list[list[int]]
    num_blocks: int
    block_size: int


def paged_forward(model, forward_context: Callable[[], ContextManager], pool: BlockPool, plan: Plan) -> torch.Tensor:
    """The last position's logits of each sequence, [sequences, vocab], after feeding its
    `inputs` (laid end to end in one row, each at its own positions), whose keys and values are
    written into its blocks."""
    device = next(iter(model.parameters())).device
    widths = [len(tokens) for tokens in plan.inputs]
    ids = torch.tensor([[token for tokens in plan.inputs for token in tokens]], dtype=torch.long)
    positions = torch.cat([torch.arange(c, c + n) for c, n in zip(plan.cached, widths)])[None]
    last = torch.tensor(widths).cumsum(0) - 1
    view = PagedForward(pool, plan.tables, plan.cached, widths, device)
    with torch.no_grad(), forward_context():
        logits = whole(model(ids.to(device), position_ids=positions.to(device), kv_cache=view,
                             logits_to_keep=last.to(device)).logits)[0]
    return logits.to(at_least_fp32(logits.dtype))


class Sequence:
    """A row being served: its tokens so far, the blocks holding their keys and values, and how
    many of them are cached."""

    def __init__(self, row, arrived: float) -> None:
        self.row = row
        self.tokens = list(row.settings.prompt_ids)
        self.blocks: list[int] = []
        self.cached = 0
        self.prefilled = False
        self.arrived = arrived
        self.last_token_at: Optional[float] = None
        self.names: list[bytes] = []  # of its full blocks so far: its tokens only grow

    @property
    def prompt_tokens(self) -> int:
        return len(self.row.settings.prompt_ids)

    def block_names(self, block_size: int, count: int) -> list[bytes]:
        """`block_names` of its first `count` full blocks, each digest made once."""
        if count > len(self.names):
            self.names = block_names(self.tokens, block_size, count, self.names)
        return self.names[:count]


def block_names(tokens: list[int], block_size: int, count: int, known: Optional[list[bytes]] = None) -> list[bytes]:
    """Names of the first `count` full blocks of `tokens`: each a digest of its tokens and of
    the name of the block before it, so a name stands for the whole prefix up to the block's end.
    A cryptographic digest, not Python's `hash`: a request whose tokens collided with another's
    prefix would be answered from that request's keys and values. `known`: the names of the
    first blocks already made, extended rather than made again."""
    names = list((known or [])[:count])
    previous = names[-1] if names else b""
    for index in range(len(names), count):
        block = array.array("q", tokens[index * block_size:(index + 1) * block_size]).tobytes()
        previous = hashlib.blake2b(previous + block, digest_size=16).digest()
        names.append(previous)
    return names


class ContinuousBatcher:
    def __init__(self, pool: BlockPool, forward: Callable[[Plan], torch.Tensor], max_batch_size: int,
                 max_num_tokens: int, metrics: ServeMetrics) -> None:
        self.pool, self.forward = pool, forward
        self.max_batch_size, self.max_num_tokens = max_batch_size, max_num_tokens
        self.metrics = metrics
        self.running: list[Sequence] = []
        self.prefix_hit_tokens = 0

    # -- admission and leaving ------------------------------------------------------
    def room(self) -> int:
        return self.max_batch_size - len(self.running)

    def admit(self, rows: list, arrived: float) -> None:
        self.running.extend(Sequence(row, arrived) for row in rows)

    def _leave(self, sequence: Sequence) -> None:
        self.pool.release(sequence.blocks)
        sequence.blocks = []
        self.running.remove(sequence)

    def drop_finished(self) -> None:
        """Sequences that finished or whose client went away give their blocks back now."""
        for sequence in list(self.running):
            if sequence.row.job.cancelled:
                sequence.row.done = True
            if sequence.row.done:
                self._leave(sequence)

    def fail_all(self) -> list:
        """A forward failed: every running sequence leaves; their jobs are returned."""
        jobs = []
        for sequence in list(self.running):
            if sequence.row.job not in jobs:
                jobs.append(sequence.row.job)
            sequence.row.done = True
            self._leave(sequence)
        return jobs

    # -- one iteration --------------------------------------------------------------------
    def step(self) -> None:
        """One forward: every decoding sequence's next token and the prompt chunks of those
        joining, laid end to end."""
        work = self._decoding() + self._prefilling()
        # Planning may have preempted a sequence already planned: it is recomputed later.
        work = [(s, start, tokens) for s, start, tokens in work
                if s.cached == start and len(s.blocks) * self.pool.block_size >= start + len(tokens)]
        if work:
            logits = self.forward(self._plan(work))
            now = time.perf_counter()
            for (sequence, start, tokens), last in zip(work, logits):
                self._cached(sequence, start + len(tokens))
                if sequence.cached < len(sequence.tokens):
                    continue  # a prompt chunk: the rest of the prompt comes next iteration
                if not sequence.prefilled:
                    first = sequence.last_token_at is None
                    sequence.prefilled = True
                    self.metrics.prompt(sequence.prompt_tokens if first else 0)
                    if first:
                        self.metrics.first_token(now - sequence.arrived)
                self._accept(sequence, last, now)
        self.drop_finished()
        self.metrics.kv_blocks(self.pool.used, self.pool.num_blocks - self.pool.used)

    def _decoding(self) -> list[tuple[Sequence, int, list[int]]]:
        work = []
        for sequence in [s for s in self.running if s.prefilled and not s.row.done]:
            # Oldest first: a block for this one may preempt a newer one, not yet looked at.
            if sequence.prefilled and self._hold_blocks(sequence, sequence.cached + 1):
                work.append((sequence, sequence.cached, sequence.tokens[sequence.cached:]))
        return work

    def _prefilling(self) -> list[tuple[Sequence, int, list[int]]]:
        """Prompt chunks of at most `max_num_tokens` tokens in all, oldest sequence first."""
        budget, work, claimed = self.max_num_tokens, [], set()
        size = self.pool.block_size
        for sequence in [s for s in self.running if not s.prefilled]:
            if budget <= 0:
                break
            if sequence.cached == 0 and not sequence.blocks:
                names = sequence.block_names(size, (len(sequence.tokens) - 1) // size)
                if names and names[0] in claimed:
                    continue  # another sequence computes the same first block now: reuse it next iteration
                self._reuse_prefix(sequence, names)
                claimed.update(names[len(sequence.blocks):])
            chunk = min(len(sequence.tokens) - sequence.cached, budget)
            if not self._hold_blocks(sequence, sequence.cached + chunk):
                break
            work.append((sequence, sequence.cached, sequence.tokens[sequence.cached:sequence.cached + chunk]))
            budget -= chunk
        return work

    # -- blocks -----------------------------------------------------------------------------
    def _reuse_prefix(self, sequence: Sequence, names: list[bytes]) -> None:
        for name in names:
            block = self.pool.lookup(name)
            if block is None:
                break
            sequence.blocks.append(block)
        sequence.cached = len(sequence.blocks) * self.pool.block_size
        if sequence.cached:
            self.prefix_hit_tokens += sequence.cached
            self.metrics.prefix_hit(sequence.cached)

    def _hold_blocks(self, sequence: Sequence, positions: int) -> bool:
        """Blocks for `positions` tokens of `sequence`, preempting the newest other running
        sequences while none is free; False (nothing held for it) when it is the newest itself."""
        needed = -(-positions // self.pool.block_size) - len(sequence.blocks)
        while needed > 0:
            try:
                sequence.blocks.append(self.pool.allocate())
                needed -= 1
            except NoFreeBlock:
                victim = next((s for s in reversed(self.running) if s.blocks and s is not sequence), None)
                if victim is None or self.running.index(victim) < self.running.index(sequence):
                    self._preempt(sequence)
                    return False
                self._preempt(victim)
        return True

    def _preempt(self, sequence: Sequence) -> None:
        self.pool.release(sequence.blocks)
        sequence.blocks, sequence.cached, sequence.prefilled = [], 0, False
        self.metrics.preempted()

    def _cached(self, sequence: Sequence, cached: int) -> None:
        """`cached` tokens of `sequence` are in its blocks now: its newly full blocks get names."""
        size = self.pool.block_size
        before, sequence.cached = sequence.cached // size, cached
        full = cached // size
        if full > before:
            names = sequence.block_names(size, full)
            for index in range(before, full):
                self.pool.name(sequence.blocks[index], names[index])

    def _plan(self, work: list[tuple[Sequence, int, list[int]]]) -> Plan:
        return Plan([list(s.blocks) for s, _, _ in work], [start for _, start, _ in work],
                    [tokens for _, _, tokens in work], self.pool.num_blocks, self.pool.block_size)

    def _accept(self, sequence: Sequence, logits: torch.Tensor, now: float) -> None:
        row = sequence.row
        if row.done:
            return
        token = row.choose(logits)
        row.accept(token)
        if sequence.last_token_at is not None:
            self.metrics.token_gap(now - sequence.last_token_at)
        sequence.last_token_at = now
        self.metrics.generated(1)
        sequence.tokens.append(token)
