"""Metrics accumulate over an evaluation and report named numbers.

`update` sees one batch's results; `reduce` combines accumulators across data-parallel ranks
(sums, or gathered samples); `get_metric` returns `{name: value}` and `reset` starts over.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.distributed as dist


class BaseMetric:
    def update(self, result: dict) -> None:
        raise NotImplementedError

    def reduce(self, group: Optional[dist.ProcessGroup]) -> None:
        """Combine this rank's accumulators with the other data-parallel ranks' (`group`; None
        when there is a single replica: tensor/pipeline ranks hold the same results)."""

    def get_metric(self) -> dict:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class PPLMetric(BaseMetric):
    """exp(total NLL / total predicted tokens): token-weighted, not a mean of batch perplexities."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.nll = 0.0
        self.tokens = 0

    def update(self, result: dict) -> None:
        self.nll += float(result["nll_sum"])
        self.tokens += int(result["tokens"])

    def reduce(self, group) -> None:
        if group is not None:
            totals = torch.tensor([self.nll, float(self.tokens)], dtype=torch.float64)
            dist.all_reduce(totals, group=group)
            self.nll, self.tokens = float(totals[0]), int(totals[1])

    def get_metric(self) -> dict:
        if self.tokens == 0:
            return {"ppl": float("nan")}
        return {"ppl": math.exp(self.nll / self.tokens)}


class DecodeMetric(BaseMetric):
    """Keeps decoded samples (shown by the evaluator) and scores exact match against targets."""

    def __init__(self, normalise: Callable[[str], str] = str.strip) -> None:
        self.normalise = normalise
        self.reset()

    def reset(self) -> None:
        self.samples: list[dict] = []

    def update(self, result: dict) -> None:
        for prompt, pred, target in zip(result["prompt"], result["pred"], result["target"]):
            self.samples.append({"prompt": prompt, "pred": pred, "target": target})

    def reduce(self, group) -> None:
        self.samples = gather_lists(self.samples, group)

    def get_metric(self) -> dict:
        # "samples" is not a number: sinks skip it, the console shows it.
        scored = [s for s in self.samples if s["target"] is not None]
        if not scored:
            return {"samples": list(self.samples)}
        hits = sum(self.normalise(s["pred"]) == self.normalise(s["target"]) for s in scored)
        return {"exact_match": hits / len(scored), "samples": list(self.samples)}


class PairMetric(BaseMetric):
    """Accumulates (prediction, target) pairs, gathered over data-parallel ranks; subclasses
    say which pairs a batch result holds (`pairs_of`) and what they score (`get_metric`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pairs: list[tuple] = []

    def update(self, result: dict) -> None:
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
