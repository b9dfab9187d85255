"""Preference losses on per-sequence log-probabilities, with trl's formulas and trl's rewards.

Sources (trl 1.16.0): DPO, IPO and hinge from `DPOTrainer._compute_loss` (`loss_type` "sigmoid",
"ipo", "hinge"; IPO on log-ratios divided by each completion's token count, as trl does); cDPO
(`label_smoothing`) and SimPO from `CPOTrainer.cpo_loss` (`loss_type` "sigmoid", "simpo"); ORPO
from `ORPOTrainer.odds_ratio_loss` and `get_batch_loss_metrics`. Every function returns the loss
of each pair; a step averages them over the pairs of its global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from collie.preference.logps import SequenceLogps

LOSSES = ("dpo", "ipo", "hinge", "simpo", "orpo")
# The losses that compare the policy with a reference model; SimPO and ORPO need none.
REFERENCE_LOSSES = ("dpo", "ipo", "hinge")
# A preference step's columns beside its loss: means over the global batch's pairs (trl's meanings).
REWARD_COLUMNS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy")


class PreferenceOutput(NamedTuple):
    """Per pair: the loss (differentiable) and trl's implicit rewards (detached)."""

    losses: torch.Tensor
    rewards_chosen: torch.Tensor
    rewards_rejected: torch.Tensor

    @property
    def reward_margin(self) -> torch.Tensor:
        return self.rewards_chosen - self.rewards_rejected

    @property
    def reward_accuracy(self) -> torch.Tensor:
        """1.0 where the chosen completion's reward is strictly higher (trl's `rewards/accuracies`)."""
        return (self.rewards_chosen > self.rewards_rejected).to(self.rewards_chosen.dtype)


def _smoothed_sigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """−log σ(z), or with conservative label smoothing ε (cDPO): −(1−ε)·log σ(z) − ε·log σ(−z)."""
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def _reference_rewards(losses: torch.Tensor, chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
                       beta: float) -> PreferenceOutput:
    return PreferenceOutput(losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach())


def dpo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0) -> PreferenceOutput:
    """−log σ(β·[(π_c − ref_c) − (π_r − ref_r)]) on summed log-probabilities (cDPO with `label_smoothing`)."""
    chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    return _reference_rewards(_smoothed_sigmoid(beta * (chosen - rejected), label_smoothing), chosen, rejected, beta)


def ipo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
        beta: float = 0.1) -> PreferenceOutput:
    """(Δ − 1/(2β))², Δ = (π_c − ref_c)/n_c − (π_r − ref_r)/n_r with n a completion's token count."""
    chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    delta = chosen / chosen_tokens.clamp(min=1).to(chosen.dtype) - rejected / rejected_tokens.clamp(min=1).to(chosen.dtype)
    return _reference_rewards((delta - 1 / (2 * beta)) ** 2, chosen, rejected, beta)


def hinge(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
          reference_rejected: torch.Tensor, beta: float = 0.1) -> PreferenceOutput:
    """max(0, 1 − β·[(π_c − ref_c) − (π_r − ref_r)]) (SLiC's hinge on the DPO log-ratios)."""
    chosen, rejected = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    return _reference_rewards(torch.relu(1 - beta * (chosen - rejected)), chosen, rejected, beta)


def simpo(chosen_average: torch.Tensor, rejected_average: torch.Tensor, beta: float = 0.1, simpo_gamma: float = 0.5,
          label_smoothing: float = 0.0) -> PreferenceOutput:
    """−log σ(β·(ā_c − ā_r) − γ) on length-normalised log-probabilities ā, no reference; rewards β·ā."""
    losses = _smoothed_sigmoid(beta * (chosen_average - rejected_average - simpo_gamma / beta), label_smoothing)
    return PreferenceOutput(losses, beta * chosen_average.detach(), beta * rejected_average.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, accurate on both sides of −ln 2 (Mächler's two branches)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(chosen_average: torch.Tensor, rejected_average: torch.Tensor, orpo_lambda: float = 0.1) -> PreferenceOutput:
    """−ā_c − λ·log σ(log odds_c − log odds_r), odds = p/(1−p) of the length-normalised p = e^ā: the
    chosen completion's per-token NLL plus the odds-ratio term; rewards λ·ā (trl's `beta` is λ)."""
    log_odds = (chosen_average - rejected_average) - (log1mexp(chosen_average) - log1mexp(rejected_average))
    losses = -chosen_average - orpo_lambda * F.logsigmoid(log_odds)
    return PreferenceOutput(losses, orpo_lambda * chosen_average.detach(), orpo_lambda * rejected_average.detach())


@dataclass(frozen=True)
class PreferenceLoss:
    """One of `LOSSES` with its settings, applied to a batch of 2·B rows (chosen first, then rejected).

    `beta`: DPO/IPO/hinge/SimPO temperature (IPO's τ); `label_smoothing`: cDPO's ε (DPO and SimPO);
    `simpo_gamma`: SimPO's target margin γ; `orpo_lambda`: ORPO's weight λ of the odds-ratio term."""

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"preference.loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"preference.beta: must be a positive number, got {self.beta!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"preference.label_smoothing: must be in [0, 0.5), got {self.label_smoothing!r}")
        if self.label_smoothing and self.loss not in ("dpo", "simpo"):
            raise ValueError(f"preference.label_smoothing: applies to dpo and simpo only, not {self.loss!r}")
        if not math.isfinite(self.simpo_gamma):
            raise ValueError(f"preference.simpo_gamma: must be a finite number, got {self.simpo_gamma!r}")
        if not (math.isfinite(self.orpo_lambda) and self.orpo_lambda >= 0):
            raise ValueError(f"preference.orpo_lambda: must be a number ≥ 0, got {self.orpo_lambda!r}")

    @property
    def needs_reference(self) -> bool:
        return self.loss in REFERENCE_LOSSES

    def __call__(self, policy: SequenceLogps, reference: Optional[torch.Tensor] = None) -> PreferenceOutput:
        """`policy`: the 2·B rows' log-probabilities; `reference`: the reference model's summed
        log-probabilities of the same rows (DPO, IPO and hinge only)."""
        if self.needs_reference != (reference is not None):
            raise ValueError(f"preference.loss {self.loss!r} " + ("needs reference log-probabilities" if
                             self.needs_reference else "takes no reference log-probabilities"))
        chosen, rejected = policy.pairs()
        if self.loss == "simpo":
            return simpo(chosen.average, rejected.average, self.beta, self.simpo_gamma, self.label_smoothing)
        if self.loss == "orpo":
            return orpo(chosen.average, rejected.average, self.orpo_lambda)
        reference_chosen, reference_rejected = reference.to(policy.summed.device, policy.summed.dtype).chunk(2)
        if self.loss == "dpo":
            return dpo(chosen.summed, rejected.summed, reference_chosen, reference_rejected, self.beta,
                       self.label_smoothing)
        if self.loss == "ipo":
            return ipo(chosen.summed, rejected.summed, reference_chosen, reference_rejected, chosen.tokens,
                       rejected.tokens, self.beta)
        return hinge(chosen.summed, rejected.summed, reference_chosen, reference_rejected, self.beta)
