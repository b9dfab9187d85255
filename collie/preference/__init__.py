"""Preference training's arithmetic: per-sequence log-probabilities and the DPO-family losses."""

from collie.preference.logps import SequenceLogps, sequence_logps
from collie.preference.losses import (
    LOSSES,
    REFERENCE_LOSSES,
    REWARD_COLUMNS,
    PreferenceLoss,
    PreferenceOutput,
    dpo,
    hinge,
    ipo,
    orpo,
    simpo,
)

__all__ = ["LOSSES", "REFERENCE_LOSSES", "REWARD_COLUMNS", "PreferenceLoss", "PreferenceOutput", "SequenceLogps", "dpo",
           "hinge", "ipo", "orpo", "sequence_logps", "simpo"]
