"""One optimizer step over a global batch's micro-batches.

The loss of a step is the mean over every trainable token of the global batch: each
micro-batch's mean loss is weighted by its share of the global token count (summed over
micro-batches and data-parallel ranks first). Gradient accumulation and data parallelism
therefore change neither the loss nor the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional, Protocol

import torch
import torch.nn.functional as F

from collie.dtypes import at_least_fp32
from collie.models.base import CollieModel
from collie.models.loss import IGNORE_INDEX, GPTLMLoss, count_loss_tokens
from collie.tensors import whole


@dataclass
class StepResult:
    loss: float          # mean over trainable tokens of the global batch (nan if it had none)
    tokens: int          # real (non-padding) tokens of the global batch
    skipped: bool = False
    # The objective's statistics (a preference step's rewards): means over the global batch's units.
    stats: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """A step loss that is a mean over other units than trainable tokens (a preference step's
    pairs). `units(mb)` counts a micro-batch's; the micro-batch loss `loss_of` returns is a mean
    over them. Each loss computation sums per-unit statistics (`stat_names`); `take_stats(last)`
    returns the sums of the `last` computations (None: all) and forgets them all."""

    stat_names: tuple[str, ...]

    def units(self, micro_batch: dict) -> int: ...

    def take_stats(self, last: Optional[int] = None) -> list[float]: ...


class PipelineObjective(Objective, Protocol):
    """An objective the last pipeline stage computes: `target(mb)` is what it receives of each
    micro-batch (cut row-wise like the inputs), `summed_loss(logits, target)` the sum of the
    micro-batch's unit losses."""

    def target(self, micro_batch: dict) -> torch.Tensor: ...

    def summed_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@dataclass
class _Counts:
    per_micro_batch: list[int]   # loss units (trainable tokens, or pairs) of each of this rank's micro-batches
    loss_tokens: float           # loss units of the global batch (all micro-batches, all dp ranks)
    real_tokens: int             # non-padding tokens of the global batch


def _count(micro_batches: list[dict], dp_sum: Callable[[list[float]], list[float]], ignore_index: int,
           objective: Optional[Objective]) -> _Counts:
    """The step's counts: summed over micro-batches and data-parallel ranks first, so the loss
    is a mean over the global batch's tokens (or the objective's units) whatever the layout."""
    counts = [objective.units(mb) if objective is not None else count_loss_tokens(mb["labels"], ignore_index)
              for mb in micro_batches]
    real = sum(int((mb["attention_mask"] > 0).sum()) for mb in micro_batches)  # packed masks hold document numbers
    loss_tokens, real_tokens = dp_sum([float(sum(counts)), float(real)])
    return _Counts(counts, loss_tokens, int(real_tokens))


def _means(objective: Optional[Objective], sums: list[float], units: float) -> dict[str, float]:
    return dict(zip(objective.stat_names, (value / units for value in sums))) if objective is not None else {}


def run_micro_batches(model: torch.nn.Module, micro_batches: list[dict], loss_of: Callable[[dict], torch.Tensor],
                      backward: Callable[[torch.Tensor, bool], None], dp_sum: Callable[[list[float]], list[float]],
                      dp_size: int, ignore_index: int = IGNORE_INDEX, objective: Optional[Objective] = None) -> StepResult:
    """Forward and backward every micro-batch with token-weighted loss scaling (weighted by
    `objective`'s units when given).

    `backward(loss, is_last)` applies the gradient (plain backward, or an optimizer that
    updates inside backward). `dp_sum` sums a list of numbers over data-parallel ranks.
    """
    counts = _count(micro_batches, dp_sum, ignore_index, objective)
    if counts.loss_tokens == 0:
        return StepResult(float("nan"), counts.real_tokens, skipped=True)
    loss_sum = 0.0
    last = len(micro_batches) - 1
    for i, (mb, count) in enumerate(zip(micro_batches, counts.per_micro_batch)):
        if count == 0:
            # Still run forward and backward: sharded data parallel needs every rank to take
            # part in the same collectives. The zero factor keeps the gradient exactly zero.
            contribution = model(mb["input_ids"], attention_mask=mb["attention_mask"]).logits.sum() * 0.0
        else:
            loss = loss_of(mb)
            # dp_size undoes the gradient averaging that data parallel applies.
            contribution = loss * (count * dp_size / counts.loss_tokens)
            loss_sum += float(whole(loss.detach())) * count
        backward(contribution, i == last)
    global_loss_sum, *stats = dp_sum([loss_sum, *(objective.take_stats() if objective is not None else [])])
    return StepResult(global_loss_sum / counts.loss_tokens, counts.real_tokens,
                      stats=_means(objective, stats, counts.loss_tokens))


def run_pipeline_step(runner, micro_batches: list[dict], dp_sum: Callable[[list[float]], list[float]],
                      pp_sum: Callable[[float], float], dp_size: int,
                      ignore_index: int = IGNORE_INDEX, loss_fn: Optional[Callable] = None,
                      objective: Optional[PipelineObjective] = None) -> StepResult:
    """The same step through a pipeline schedule: the last stage sums each micro-batch's token
    losses (or `objective`'s unit losses) weighted by the global count; the mean then reaches
    every stage."""
    counts = _count(micro_batches, dp_sum, ignore_index, objective)
    if counts.loss_tokens == 0:
        return StepResult(float("nan"), counts.real_tokens, skipped=True)
    input_ids, attention_mask = (torch.cat([mb[key] for mb in micro_batches]) for key in ("input_ids", "attention_mask"))
    # The schedule cuts the rows back into the micro-batches they came from (all have as many rows).
    target = torch.cat([objective.target(mb) if objective is not None else mb["labels"] for mb in micro_batches])
    contribution = runner.step(input_ids, target, attention_mask, loss_weight=dp_size / counts.loss_tokens,
                               loss_fn=loss_fn, ignore_index=ignore_index,
                               summed_loss=objective.summed_loss if objective is not None else None)
    # Only the last stage computed the statistics; the other stages add zeros. On its first step
    # a schedule computes one more loss before the micro-batches' own, to learn shapes.
    stats = objective.take_stats(last=len(micro_batches)) if objective is not None else []
    loss, *stats = (pp_sum(value) for value in dp_sum([contribution / dp_size, *stats]))
    return StepResult(loss, counts.real_tokens, stats=_means(objective, stats, counts.loss_tokens))


def refresh_hessian(model: torch.nn.Module, optimizer, micro_batch: dict) -> None:
    """SophiaG's Gauss-Newton-Bartlett estimate: backward on labels sampled from the model."""
    logits = model(micro_batch["input_ids"], attention_mask=micro_batch["attention_mask"]).logits
    mask = micro_batch["attention_mask"][:, 1:].reshape(-1).bool()
    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
    flat = flat.to(at_least_fp32(flat.dtype))
    with torch.no_grad():
        sampled = torch.multinomial(flat.softmax(-1), 1).squeeze(-1)
    loss = F.cross_entropy(flat[mask], sampled[mask], reduction="sum") / micro_batch["input_ids"].shape[0]
    loss.backward()
    optimizer.update_hessian()
    optimizer.zero_grad(set_to_none=True)


def default_loss(model: torch.nn.Module, loss_fn: Callable, batch: dict,
                 forward_context: Callable[[], ContextManager]) -> torch.Tensor:
    if model_computes_loss(model, loss_fn):  # the same loss, with logits only where it reads them
        with forward_context():
            return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         skip_logits=True).loss
    with forward_context():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return loss_fn(logits, batch["labels"])


def model_computes_loss(model: torch.nn.Module, loss_fn: Callable) -> bool:
    """Whether the loss is collie's next-token loss and the model is collie's, which computes it
    from the labelled positions' logits alone (and in chunks under `loss_chunk_tokens`)."""
    return isinstance(model, CollieModel) and type(loss_fn) is GPTLMLoss and loss_fn.ignore_index == IGNORE_INDEX
