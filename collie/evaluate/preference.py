"""Evaluating preference pairs: the loss, trl's implicit rewards and how often the chosen
completion wins, on held-out pairs."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from collie.data.preference import PreferenceCollator
from collie.evaluate.evaluators import Evaluator
from collie.evaluate.metrics import BaseMetric
from collie.models.loss import IGNORE_INDEX
from collie.preference import PreferenceLoss, sequence_logps
from collie.tensors import whole

# Per-pair values an evaluation reports (means over the pairs), with trl's meanings.
PAIR_VALUES = ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")


class PreferenceMetric(BaseMetric):
    """Means over every evaluated pair of `PAIR_VALUES`, reported as `eval_<value>`."""

    combines_ranks = True

    def __init__(self, gather_result: bool = False) -> None:
        super().__init__(gather_result)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(PAIR_VALUES), dtype=torch.float64)
        self.pairs = 0

    def update(self, result: dict) -> None:
        missing = [key for key in PAIR_VALUES if key not in result]
        if missing:
            raise KeyError(f"PreferenceMetric: the result lacks {missing}; it reads EvaluatorForPreference's results")
        values = torch.stack([torch.as_tensor(result[key]).detach().reshape(-1).double().cpu() for key in PAIR_VALUES])
        self.sums += values.sum(-1)
        self.pairs += values.shape[-1]

    def reduce(self, group: Optional[dist.ProcessGroup]) -> None:
        if group is not None:
            totals = torch.cat([self.sums, torch.tensor([float(self.pairs)], dtype=torch.float64)])
            dist.all_reduce(totals, group=group)
            self.sums, self.pairs = totals[:-1], int(totals[-1])

    def get_metric(self) -> Optional[dict]:
        if not self.pairs:
            return None
        return {f"eval_{key}": float(value) / self.pairs for key, value in zip(PAIR_VALUES, self.sums)}


class EvaluatorForPreference(Evaluator):
    """`loss` on a preference dataset's pairs (`CollieDatasetForPreference`). Losses with a
    reference read each item's `ref_chosen_logps` / `ref_rejected_logps`, which the Trainer's
    reference pass adds to the dataset before the first evaluation."""

    def __init__(self, model: torch.nn.Module, config, dataset, loss: PreferenceLoss,
                 metrics: Optional[dict[str, BaseMetric]] = None, **kwargs: Any) -> None:
        super().__init__(model, config, dataset, metrics or {"preference": PreferenceMetric()}, **kwargs)
        self.loss = loss

    def prepare(self, items: list[dict]):
        if not self._own_padder:
            return self.collate_fn(items)
        return PreferenceCollator(self.collate_fn)(items)

    def eval_batch(self, batch: dict) -> dict:
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        logits = whole(self.model(ids, attention_mask=mask).logits)
        logps = sequence_logps(logits, batch["labels"].to(self.device), IGNORE_INDEX)
        reference = batch.get("reference_logps")
        if self.loss.needs_reference and reference is None:
            raise ValueError(f"{self.name}: {self.loss.loss} needs the reference log-probabilities of the pairs; "
                             "evaluate through the Trainer, whose reference pass adds them")
        out = self.loss(logps, reference if self.loss.needs_reference else None)
        return {"loss": out.losses, "rewards_chosen": out.rewards_chosen, "rewards_rejected": out.rewards_rejected,
                "reward_margin": out.reward_margin, "reward_accuracy": out.reward_accuracy}
