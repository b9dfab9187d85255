"""A preference step's objective: the mean pair loss over the global batch's pairs.

Micro-batches are the pair collate's 2·B rows (chosen first, then the rejected rows in the same
order), so a pair's two sequences are always in one forward and its loss is whole before
backward — what an optimizer that updates inside backward (LOMO, AdaLomo) needs. The step code
(`collie.distributed.steps`) weighs each micro-batch by its share of the global pair count,
over gradient accumulation, data-parallel ranks and pipeline micro-batches alike.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional

import torch

from collie.models.loss import IGNORE_INDEX
from collie.preference import REWARD_COLUMNS, PreferenceLoss, sequence_logps
from collie.tensors import whole


class PreferenceObjective:
    """`loss` applied to each micro-batch's pairs; the rewards summed per pair for the monitors."""

    stat_names = REWARD_COLUMNS

    def __init__(self, loss: PreferenceLoss, ignore_index: int = IGNORE_INDEX) -> None:
        self.loss, self.ignore_index = loss, ignore_index
        # The statistics' sums of each loss computation since they were last taken.
        self._computed: list[torch.Tensor] = []

    def units(self, micro_batch: dict) -> int:
        return micro_batch["input_ids"].shape[0] // 2

    def loss_of(self, model: torch.nn.Module, forward_context: Callable[[], ContextManager]) -> Callable[[dict], torch.Tensor]:
        """The mean pair loss of a micro-batch, as the step calls it."""
        def loss(micro_batch: dict) -> torch.Tensor:
            with forward_context():
                logits = model(micro_batch["input_ids"], attention_mask=micro_batch["attention_mask"]).logits
            summed = self._summed(logits, micro_batch["labels"], micro_batch.get("reference_logps"))
            return summed / self.units(micro_batch)
        return loss

    # -- the pipeline's last stage ----------------------------------------------
    def target(self, micro_batch: dict) -> torch.Tensor:
        """What the last stage receives of a micro-batch: the labels, and the reference
        log-probabilities as one more column, their float64 bits carried exactly in int64."""
        labels, reference = micro_batch["labels"], micro_batch.get("reference_logps")
        if reference is None:
            return labels
        bits = reference.to(device=labels.device, dtype=torch.float64).view(torch.int64)
        return torch.cat([labels, bits.unsqueeze(-1)], dim=-1)

    def summed_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.loss.needs_reference:
            return self._summed(logits, target, None)
        return self._summed(logits, target[:, :-1], target[:, -1].contiguous().view(torch.float64))

    # -- statistics ---------------------------------------------------------------
    def take_stats(self, last: Optional[int] = None) -> list[float]:
        computed, self._computed = self._computed[-last:] if last else self._computed, []
        return torch.stack(computed).sum(0).tolist() if computed else [0.0] * len(REWARD_COLUMNS)

    def _summed(self, logits: torch.Tensor, labels: torch.Tensor, reference: Optional[torch.Tensor]) -> torch.Tensor:
        logps = sequence_logps(logits, labels, self.ignore_index)
        # Vocabulary-sharded logits (loss parallel) give per-row sums as a DTensor: made whole here,
        # a differentiable all-reduce of one number per row.
        out = self.loss(logps._replace(summed=whole(logps.summed), tokens=whole(logps.tokens)), reference)
        self._computed.append(torch.stack([out.rewards_chosen.sum(), out.rewards_rejected.sum(),
                                           out.reward_margin.sum(), out.reward_accuracy.sum()]).detach().to("cpu", torch.float64))
        return out.losses.sum()
