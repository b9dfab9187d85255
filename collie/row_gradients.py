"""A weight's gradient handed to whoever consumes it a block of rows at a time, never whole.

An optimizer that updates parameters inside backward (LOMO, AdaLomo) needs a gradient only to
measure or apply it. Where a backward can make its weight's gradient a block of rows at a time
(the LM head's loss: each block is one narrow matmul from what forward saved), it offers the
rows instead of returning the gradient, and the whole gradient never exists: 250 MB for a
32k-vocabulary head at hidden 2048, the largest single buffer of a LOMO step.

The consumer registers itself per parameter (`take_rows`) and says, at each backward, whether
it takes the rows this time (`rows_taker`). A backward that hands them over must compute
everything else that reads the weight first (the input's gradient), since the consumer may
update it in place, and returns no gradient for it. Only a parameter read by one autograd node
in the graph may be taken this way: its rows are then its whole gradient.

A consumer whose use of a block depends on that block alone (LOMO's SGD, any norm pass) may also
take blocks as backward makes them (`block_taker`): any shape, any order, each element once. A
backward that works a block at a time anyway (the gated MLP recomputed under checkpointing, the
head's loss over blocks of the vocabulary) then never holds any gradient whole, nor the
activations' gradients it would be made from; it must have read the block's weights for
everything else before handing the block over.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Callable, NamedTuple, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

# `rows(index)`: the gradient's rows `index` (a slice), in the compute dtype (at least fp32 on
# CPUs), in a fresh buffer.
GradientRows = Callable[[slice], torch.Tensor]
# Takes a parameter's gradient by rows for this backward pass.
RowsTaker = Callable[[GradientRows], None]
# `take(index, block)`: the gradient's block `param[index]` (a tuple of slices), as `rows` makes
# them, handed over once.
BlockTaker = Callable[[tuple, torch.Tensor], None]


class Takers(NamedTuple):
    """How a consumer takes a parameter's gradient in one backward pass: by rows on demand, and
    (None: not) a block at a time as it is made."""

    rows: RowsTaker
    block: Optional[BlockTaker] = None


# Says, at a backward, whether (and how) a parameter's gradient is taken; None: it is not.
TakerFor = Callable[[torch.Tensor], Optional[Takers]]

# Keyed by identity, held weakly: a tensor's `==` is elementwise.
_takers = WeakIdKeyDictionary()


def take_rows(param: torch.Tensor, taker_for: Optional[TakerFor], by_blocks: bool = False) -> None:
    """Register `taker_for` as the consumer of `param`'s gradient rows (None: unregister);
    `by_blocks`: it takes blocks as they are made in the passes that update (see `takes_blocks`).
    A bound method is held weakly: its owner (an optimizer) holds the parameter, so a strong
    reference here would keep both alive for good."""
    if taker_for is None:
        _takers.pop(param, None)
    elif inspect.ismethod(taker_for):
        _takers[param] = (weakref.WeakMethod(taker_for), by_blocks)
    else:
        _takers[param] = ((lambda: taker_for), by_blocks)


def takes_blocks(param: torch.Tensor) -> bool:
    """Whether `param`'s gradient will be taken a block at a time as it is made (`block_taker`)
    in the backward passes that update it: known in forward, where a node chooses what to keep."""
    ref, by_blocks = _takers.get(param, (None, False))
    return by_blocks and ref is not None and ref() is not None


def _takers_of(param: torch.Tensor) -> Optional[Takers]:
    ref, _ = _takers.get(param, (None, False))
    taker_for = ref() if ref is not None else None
    return taker_for(param) if taker_for is not None else None


def rows_taker(param: torch.Tensor) -> Optional[RowsTaker]:
    """The consumer that takes `param`'s gradient by rows in this backward pass, or None: the
    gradient must then be returned whole, as usual."""
    takers = _takers_of(param)
    return takers.rows if takers is not None else None


def block_taker(param: torch.Tensor) -> Optional[BlockTaker]:
    """The consumer that takes `param`'s gradient a block at a time as it is made in this backward
    pass, or None: then `rows_taker`, or whole."""
    takers = _takers_of(param)
    return takers.block if takers is not None else None
