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
"""

from __future__ import annotations

import inspect
import weakref
from typing import Callable, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

# `rows(index)`: the gradient's rows `index` (a slice), at least fp32, in a fresh buffer.
GradientRows = Callable[[slice], torch.Tensor]
# Takes a parameter's gradient by rows for this backward pass.
RowsTaker = Callable[[GradientRows], None]
# Says, at a backward, whether (and how) a parameter's gradient is taken by rows; None: it is not.
TakerFor = Callable[[torch.Tensor], Optional[RowsTaker]]

# Keyed by identity, held weakly: a tensor's `==` is elementwise.
_takers = WeakIdKeyDictionary()


def take_rows(param: torch.Tensor, taker_for: Optional[TakerFor]) -> None:
    """Register `taker_for` as the consumer of `param`'s gradient rows (None: unregister). A bound
    method is held weakly: its owner (an optimizer) holds the parameter, so a strong reference
    here would keep both alive for good."""
    if taker_for is None:
        _takers.pop(param, None)
    elif inspect.ismethod(taker_for):
        _takers[param] = weakref.WeakMethod(taker_for)
    else:
        _takers[param] = lambda: taker_for


def rows_taker(param: torch.Tensor) -> Optional[RowsTaker]:
    """The consumer that takes `param`'s gradient by rows in this backward pass, or None: the
    gradient must then be returned whole, as usual."""
    ref = _takers.get(param)
    taker_for = ref() if ref is not None else None
    return taker_for(param) if taker_for is not None else None
