"""Metrics accumulate over an evaluation and report named numbers.

`update` sees one batch's results; `reduce` combines accumulators across data-parallel ranks
(sums, or gathered samples); `get_metric` returns `{name: value}` and `reset` starts over.

`update` reads the dicts collie's evaluators return and those a CoLLiE `eval_fn` returns
(`{"pred", "target"}` tensors or lists, `{"ppl"}`), so a CoLLiE user's own `eval_fn` feeds them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist


class BaseMetric:
    """`gather_result` is CoLLiE's switch. collie's own metrics always combine every
    data-parallel rank in `reduce` (their numbers do not depend on the layout); a metric of the
    user's that does not (`combines_ranks` False) and sets `gather_result` sees every rank's
    batch results in `update`, gathered by `gather`, as in CoLLiE."""

    # Whether `reduce` combines the ranks' accumulators (collie's metrics do).
    combines_ranks = False

    def __init__(self, gather_result: bool = False) -> None:
        self.gather_result = gather_result
        self.trainer = None  # CoLLiE's name for the evaluator running the metric (`construct`)

    def construct(self, trainer) -> None:
        """The evaluator (or Trainer) running this metric: `gather` reads its data-parallel group."""
        self.trainer = trainer

    def gather(self, result: dict) -> dict:
        """`result` with each tensor concatenated (dim 0) and each list joined over the data-parallel
        ranks, in rank order; `result` itself on a single replica."""
        runtime = getattr(self.trainer, "runtime", None)
        group = runtime.dp_group if runtime is not None else None
        if group is None:
            return result
        gathered = {}
        for key, value in result.items():
            if torch.is_tensor(value):
                parts: list = [None] * dist.get_world_size(group)
                dist.all_gather_object(parts, value.detach().cpu(), group=group)
                gathered[key] = torch.cat([part.reshape(1) if part.dim() == 0 else part for part in parts]).to(value.device)
            elif isinstance(value, (list, tuple)):
                gathered[key] = gather_lists(list(value), group)
            else:
                gathered[key] = value
        return gathered

    def update(self, result: dict) -> None:
        raise NotImplementedError

    def reduce(self, group: Optional[dist.ProcessGroup]) -> None:
        """Combine this rank's accumulators with the other data-parallel ranks' (`group`; None
        when there is a single replica: tensor/pipeline ranks hold the same results)."""

    def get_metric(self) -> Optional[dict]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class PPLMetric(BaseMetric):
    """exp(total NLL / total predicted tokens): token-weighted, not a mean of batch perplexities,
    from collie's `{"nll_sum", "tokens"}`. A CoLLiE `eval_fn`'s `{"ppl": tensor}` (a perplexity
    per batch or per sample) is averaged over its values instead, as CoLLiE does."""

    combines_ranks = True

    def __init__(self, gather_result: bool = False) -> None:
        super().__init__(gather_result)
        self.reset()

    def reset(self) -> None:
        self.nll = 0.0
        self.tokens = 0
        self.ppl_sum = 0.0
        self.ppl_count = 0

    def update(self, result: dict) -> None:
        if "nll_sum" in result:
            self.nll += float(result["nll_sum"])
            self.tokens += int(result["tokens"])
        elif "ppl" in result:
            values = torch.as_tensor(result["ppl"]).detach().reshape(-1).double()
            self.ppl_sum += float(values.sum())
            self.ppl_count += values.numel()
        else:
            raise KeyError(f"PPLMetric: the result has keys {sorted(result)}; expected 'nll_sum' and 'tokens', or 'ppl'")

    def reduce(self, group) -> None:
        if group is not None:
            totals = torch.tensor([self.nll, float(self.tokens), self.ppl_sum, float(self.ppl_count)],
                                  dtype=torch.float64)
            dist.all_reduce(totals, group=group)
            self.nll, self.tokens, self.ppl_sum, self.ppl_count = (float(totals[0]), int(totals[1]), float(totals[2]),
                                                                   int(totals[3]))

    def get_metric(self) -> dict:
        if self.tokens and self.ppl_count:
            raise ValueError("PPLMetric: one evaluation returned both token sums ('nll_sum') and perplexities ('ppl'); "
                             "return one kind from eval_fn")
        if self.tokens:
            return {"ppl": math.exp(self.nll / self.tokens)}
        if self.ppl_count:
            return {"ppl": self.ppl_sum / self.ppl_count}
        return {"ppl": float("nan")}


class PairMetric(BaseMetric):
    """Accumulates (prediction, target) pairs, gathered over data-parallel ranks; subclasses
    say which pairs a batch result holds (`pairs_of`) and what they score (`get_metric`)."""

    combines_ranks = True

    def __init__(self, gather_result: bool = False) -> None:
        super().__init__(gather_result)
        self.reset()

    def reset(self) -> None:
        self.pairs: list[tuple] = []

    def update(self, result: dict) -> None:
        missing = [key for key in ("pred", "target") if key not in result]
        if missing:
            raise KeyError(f"{type(self).__name__}: the result has keys {sorted(result)}; it needs 'pred' and 'target'")
        self.pairs.extend(self.pairs_of(result))

    def pairs_of(self, result: dict) -> list[tuple]:
        raise NotImplementedError

    def reduce(self, group) -> None:
        self.pairs = gather_lists(self.pairs, group)


def gather_lists(items: list, group: Optional[dist.ProcessGroup]) -> list:
    """Every data-parallel rank's list, concatenated in rank order (the list itself when there
    is a single replica, `group` None)."""
    if group is None:
        return list(items)
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, items, group=group)
    return [item for part in gathered for item in part]
