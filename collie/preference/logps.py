"""Per-sequence log-probabilities of the labelled tokens: what every preference loss is made of."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from collie.dtypes import at_least_fp32


class SequenceLogps(NamedTuple):
    """`summed`: Σ log p(token) over each row's labelled tokens; `tokens`: how many there are."""

    summed: torch.Tensor
    tokens: torch.Tensor

    @property
    def average(self) -> torch.Tensor:
        """Mean log-probability per labelled token (SimPO's and ORPO's length-normalised score)."""
        return self.summed / self.tokens.clamp(min=1).to(self.summed.dtype)

    def pairs(self) -> tuple["SequenceLogps", "SequenceLogps"]:
        """(chosen, rejected) of a batch of 2·B rows laid out chosen first, as the pair collate does."""
        (summed_c, summed_r), (tokens_c, tokens_r) = self.summed.chunk(2), self.tokens.chunk(2)
        return SequenceLogps(summed_c, tokens_c), SequenceLogps(summed_r, tokens_r)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> SequenceLogps:
    """Log-probabilities of each row's labels under `logits` ([rows, positions, vocab]); labels are
    aligned with input_ids (token t+1 is predicted at position t), as in `causal_lm_loss`.

    Half-precision logits are widened to float32 (float64 stays float64). Cross entropy with
    reduction "none" gives −log p per position without a second [positions × vocab] tensor of
    log-softmax, and is what loss parallel (vocabulary-sharded logits) knows how to compute."""
    flat = logits.reshape(-1, logits.shape[-1])
    flat = flat.to(at_least_fp32(flat.dtype))
    # The labels are shifted, not the logits: slicing the logits would copy all of them.
    shifted = F.pad(labels[..., 1:], (0, 1), value=ignore_index).to(flat.device)
    per_token = -F.cross_entropy(flat, shifted.reshape(-1), ignore_index=ignore_index, reduction="none")
    return SequenceLogps(per_token.view(shifted.shape).sum(-1), (shifted != ignore_index).sum(-1))
