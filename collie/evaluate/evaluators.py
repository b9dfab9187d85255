"""Evaluators run a model over a dataset and feed metrics.

Each data-parallel rank evaluates its own strided share of the dataset; metrics are then
reduced across ranks, so the numbers do not depend on the layout.

They take CoLLiE's arguments too: `eval_fn(evaluator, batch) -> dict` (the class's own
`eval_fn` runs `eval_batch`), `monitors` (the Trainer reads their `eval_columns`), datasets of
raw tensors, and CoLLiE's `eval(dataloader)`, which returns `{"<metric>#<key>": value}`.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional

import torch

from collie.data.collate import ColliePadder
from collie.evaluate.eval_items import token_lists
from collie.evaluate.metrics import BaseMetric
from collie.models.loss import causal_lm_loss, count_loss_tokens
from collie.tensors import whole
from collie.tokenization import pad_token_id


class Evaluator:
    # The side batches are padded on; None follows `config.data.padding_side` (generation
    # fixes it to the left: prompts must end together).
    padding_side: Optional[str] = None
    # Whether it works with sequence parallel (generation does not: it decodes token by token).
    supports_sequence_parallel = True

    def __init__(self, model: torch.nn.Module, config, dataset, metrics: Optional[dict[str, BaseMetric]] = None,
                 eval_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None,
                 name: Optional[str] = None, tokenizer: Any = None, monitors: Optional[list] = None,
                 server: Any = None) -> None:
        if server is not None:
            raise ValueError(f"{type(self).__name__}(server=...): collie serves during training from the Trainer; "
                             "pass data_provider (or serve.port) to the Trainer")
        self.model = model
        self.config = config
        self.dataset = dataset
        self.metrics = dict(metrics or {})
        for metric in self.metrics.values():
            if hasattr(metric, "construct"):
                metric.construct(self)  # CoLLiE's hook: a metric's `gather` finds the ranks through it
        if eval_fn is not None:
            self.eval_fn = eval_fn
        self.tokenizer = tokenizer if tokenizer is not None else getattr(dataset, "tokenizer", None)
        self.monitors = list(monitors or [])
        self.name = name or type(self).__name__
        # A collate_fn of the caller's is used as given; the default padder is made again for
        # the layout at `bind`.
        self.collate_fn = collate_fn or self._padder(multiple_of=1)
        self._own_padder = collate_fn is None
        self.runtime: Any = None  # set by the Trainer: device, dp rank/size, process groups
        # Set by the Trainer too: the context forwards run in (autocast, attention kernels), and
        # the one a loss is computed in (loss_parallel).
        self.forward_context: Callable[[], ContextManager] = contextlib.nullcontext
        self.loss_context: Callable[[], ContextManager] = contextlib.nullcontext

    @staticmethod
    def eval_fn(evaluator: "Evaluator", batch) -> dict:
        """One batch's results for the metrics (CoLLiE's signature; a caller's `eval_fn` replaces it)."""
        return evaluator.eval_batch(batch)

    @property
    def engine(self):
        raise AttributeError("collie has no DeepSpeed engine; an eval_fn calls evaluator.model")

    def bind(self, parallel) -> None:
        """Run on a Trainer's parallelized model (`collie.distributed.parallel_model.ParallelModel`):
        its evaluation forward, process groups, forward context and sequence padding."""
        if not self.supports_sequence_parallel:
            parallel.layout.check_token_by_token(self.name)
        self.model, self.runtime = parallel.eval_model, parallel.runtime
        self.forward_context, self.loss_context = parallel.forward_context, parallel.loss_context
        if self._own_padder:
            self.collate_fn = self._padder(multiple_of=parallel.layout.sequence_multiple)

    def _padder(self, multiple_of: int) -> ColliePadder:
        """Pads with the dataset tokenizer's pad id, on this evaluator's side, to `data.max_length`
        at most and to a multiple of `multiple_of` (sequence parallel splits sequences evenly)."""
        data = getattr(self.config, "data", None)
        side = self.padding_side or (data.padding_side if data is not None else "right")
        return ColliePadder(pad_token_id(getattr(self.dataset, "tokenizer", None)), padding_side=side,
                            max_length=data.max_length if data is not None else None, multiple_of=multiple_of)

    def evaluate(self) -> dict:
        """Run over this rank's share of the dataset; return `{metric: value}` merged over metrics."""
        results: dict = {}
        for name, values in self._run(*self._share()).items():
            results.update(values if isinstance(values, dict) else {name: values})
        return results

    def eval(self, dataloader: Optional[Iterable] = None) -> dict:
        """CoLLiE's evaluation: over `dataloader`'s batches (collated already; each rank runs what
        its own loader yields) or this rank's share of the dataset. Returns CoLLiE's keys,
        `"<metric name>#<key>"`; a metric whose `get_metric` returns None is left out."""
        results: dict = {}
        for name, values in self._run(*(self._share() if dataloader is None else (dataloader, 0))).items():
            if isinstance(values, dict):
                results.update({f"{name}#{key}": value for key, value in values.items()})
            else:
                results[name] = values
        return results

    def _share(self) -> tuple[Iterator, int]:
        """This rank's batches (a strided share of the dataset) and how many filler batches it
        runs after them. Every data-parallel rank runs as many batches: a sharded model (FSDP)
        gathers its parameters in each forward, which every rank must join, so a rank with a
        shorter share (or none: fewer items than ranks) runs repeats of the first item."""
        rank, size = (self.runtime.dp_rank, self.runtime.dp_size) if self.runtime else (0, 1)
        indices = list(range(rank, len(self.dataset), size))
        batch_size = self.config.eval_batch_size if self.config is not None else 1
        most = -(-len(range(0, len(self.dataset), size)) // batch_size)  # rank 0's share is the longest
        batches = (self.prepare([self.dataset[i] for i in indices[start:start + batch_size]])
                   for start in range(0, len(indices), batch_size))
        return batches, most - -(-len(indices) // batch_size)

    def _run(self, batches: Iterable, fillers: int = 0) -> dict:
        """Each metric's `get_metric()` after `batches`, combined over data-parallel ranks, by
        metric name; then `fillers` batches whose results count nowhere (see `_share`)."""
        for metric in self.metrics.values():
            metric.reset()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.forward_context():
                fill = (self.prepare([self.dataset[0]]) for _ in range(fillers))
                for batch, filler in itertools.chain(((b, False) for b in batches), ((b, True) for b in fill)):
                    result = self.eval_fn(self, batch)
                    if not isinstance(result, dict):
                        raise TypeError(f"{self.name}: eval_fn returned {type(result).__name__}; "
                                        "the metrics need a dict")
                    for metric in self.metrics.values():
                        if getattr(metric, "gather_result", False) and not getattr(metric, "combines_ranks", True):
                            # Every rank joins the gather; a filler batch adds nothing to it.
                            metric.update(metric.gather(_emptied(result) if filler else result))
                        elif not filler:
                            metric.update(result)
        finally:
            self.model.train(was_training)
        results = {}
        for name, metric in self.metrics.items():
            metric.reduce(self.runtime.dp_group if self.runtime else None)
            values = metric.get_metric()
            if values is not None:
                results[name] = values
        return results

    def prepare(self, items: list[dict]):
        """The batch `eval_fn` receives: the items padded (raw tensors made lists first), or a
        caller's `collate_fn` applied to them as they are."""
        if not self._own_padder:
            return self.collate_fn(items)
        return self.collate_fn([self.padder_item(token_lists(item)) for item in items])

    def padder_item(self, item: dict) -> dict:
        """What of `item` the default padder pads."""
        return item

    def eval_batch(self, batch: dict) -> dict:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.runtime.device if self.runtime else next(self.model.parameters()).device


class EvaluatorForPerplexity(Evaluator):
    """Perplexity over every labelled token (`PPLMetric`). An item without labels takes its loss
    on every token. CoLLiE's `loss_fn(logits, labels)` (a mean loss), when given, scores each
    batch instead: the result is then CoLLiE's `{"ppl": exp(loss)}`, averaged over batches."""

    def __init__(self, model: torch.nn.Module, config, dataset, metrics: Optional[dict[str, BaseMetric]] = None,
                 *, loss_fn: Optional[Callable] = None, **kwargs: Any) -> None:
        super().__init__(model, config, dataset, metrics, **kwargs)
        self.loss_fn = loss_fn

    def padder_item(self, item: dict) -> dict:
        return item if "labels" in item else {**item, "labels": list(item["input_ids"])}

    def eval_batch(self, batch: dict) -> dict:
        labels = batch["labels"].to(self.device)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        if self.loss_fn is not None:
            loss = self.loss_fn(whole(self.model(ids, attention_mask=mask).logits), labels)
            return {"ppl": torch.exp(loss.detach().double()).reshape(1)}
        tokens = count_loss_tokens(labels)
        if getattr(self.model, "loss_chunk_tokens", None) is not None:  # collie's model, or a pipeline of it
            # The model computes the mean loss from the labelled positions' logits (a chunk of
            # tokens at a time under loss_chunk_tokens): no whole logits.
            with self.loss_context():
                loss = whole(self.model(ids, attention_mask=mask, labels=labels, skip_logits=True).loss)
            nll_sum = loss * tokens if tokens else 0.0
        else:
            nll_sum = causal_lm_loss(whole(self.model(ids, attention_mask=mask).logits), labels, reduction="sum")
        # "ppl" is the batch's perplexity, for a CoLLiE metric that reads it; PPLMetric weighs by tokens.
        batch_ppl = torch.exp(torch.as_tensor(nll_sum, dtype=torch.float64).detach().cpu() / tokens) if tokens \
            else torch.tensor(float("nan"), dtype=torch.float64)
        return {"nll_sum": nll_sum, "tokens": tokens, "ppl": batch_ppl.reshape(1)}


def _emptied(result: dict) -> dict:
    """A batch result with no rows (tensors and lists cut to length 0), for a filler batch."""
    return {key: value[:0] if torch.is_tensor(value) and value.dim() > 0 or isinstance(value, (list, tuple)) else value
            for key, value in result.items()}
