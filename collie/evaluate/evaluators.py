"""Evaluators run a model over a dataset and feed metrics.

Each data-parallel rank evaluates its own strided share of the dataset; metrics are then
reduced across ranks, so the numbers do not depend on the layout.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Optional

import torch

from collie.data.collate import ColliePadder
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

    def __init__(self, model: torch.nn.Module, config, dataset, metrics: dict[str, BaseMetric],
                 eval_fn: Optional[Callable] = None, collate_fn: Optional[Callable] = None,
                 name: Optional[str] = None) -> None:
        self.model = model
        self.config = config
        self.dataset = dataset
        self.metrics = metrics
        self.eval_fn = eval_fn
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
        for metric in self.metrics.values():
            metric.reset()
        rank, size = (self.runtime.dp_rank, self.runtime.dp_size) if self.runtime else (0, 1)
        indices = list(range(rank, len(self.dataset), size))
        batch_size = self.config.eval_batch_size if self.config is not None else 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self.forward_context():
                for start in range(0, len(indices), batch_size):
                    batch = self.prepare([self.dataset[i] for i in indices[start:start + batch_size]])
                    result = self.eval_fn(self, batch) if self.eval_fn else self.eval_batch(batch)
                    for metric in self.metrics.values():
                        metric.update(result)
        finally:
            self.model.train(was_training)
        results: dict = {}
        for metric in self.metrics.values():
            metric.reduce(self.runtime.dp_group if self.runtime else None)
            results.update(metric.get_metric())
        return results

    def prepare(self, items: list[dict]):
        """The batch `eval_batch` receives: the items, padded."""
        return self.collate_fn(items)

    def eval_batch(self, batch: dict) -> dict:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.runtime.device if self.runtime else next(self.model.parameters()).device


class EvaluatorForPerplexity(Evaluator):
    def eval_batch(self, batch: dict) -> dict:
        labels = batch["labels"].to(self.device)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        tokens = count_loss_tokens(labels)
        if getattr(self.model, "loss_chunk_tokens", 0) > 0:
            # The model computes the mean loss a chunk of tokens at a time: no whole logits.
            with self.loss_context():
                loss = whole(self.model(ids, attention_mask=mask, labels=labels).loss)
            return {"nll_sum": loss * tokens if tokens else 0.0, "tokens": tokens}
        logits = whole(self.model(ids, attention_mask=mask).logits)
        return {"nll_sum": causal_lm_loss(logits, labels, reduction="sum"), "tokens": tokens}


class EvaluatorForGeneration(Evaluator):
    """Greedy (or sampled) continuation of each prompt, decoded to text."""

    padding_side = "left"
    supports_sequence_parallel = False

    def __init__(self, model, config, dataset, metrics, tokenizer=None, max_new_tokens: int = 32,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(model, config, dataset, metrics, **kwargs)
        self.tokenizer = tokenizer or dataset.tokenizer
        self.generation = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                               top_k=top_k, top_p=top_p, eos_token_id=self.tokenizer.eos_token_id,
                               pad_token_id=pad_token_id(self.tokenizer))

    def eval_batch(self, batch: dict) -> dict:
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        out = self.model.generate(input_ids, attention_mask=mask, **self.generation)
        continuation = out[:, input_ids.shape[1]:]
        preds = self.tokenizer.batch_decode(continuation, skip_special_tokens=True)
        return {"prompt": batch["text"], "pred": preds, "target": batch["target"]}
