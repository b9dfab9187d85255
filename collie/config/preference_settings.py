"""The preference settings of a run, from the `preference:` section or from a `PreferenceLoss`
given to the Trainer, checked against the rest of the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from collie.config.errors import ConfigError
from collie.preference import PreferenceLoss

REFERENCES = ("precomputed", "model", "none")


@dataclass(frozen=True)
class PreferenceSettings:
    loss: PreferenceLoss
    # Where the reference log-probabilities come from: one pass before training (precomputed), a
    # frozen model each step (model), or nowhere (none: simpo, orpo).
    reference: str


def preference_settings(config: Any, loss_fn: Any = None) -> Optional[PreferenceSettings]:
    """The run's preference settings (None: not preference training). `loss_fn`: the Trainer's,
    a `PreferenceLoss` making it preference training just as `preference.loss` does."""
    section = config.preference
    loss = loss_fn if isinstance(loss_fn, PreferenceLoss) else None
    if section.loss is not None:
        try:
            configured = PreferenceLoss(section.loss, section.beta, section.label_smoothing, section.simpo_gamma,
                                        section.orpo_lambda)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if loss is not None and loss != configured:
            raise ConfigError(f"loss_fn and preference.loss: the Trainer got {loss} but the config says {configured}; "
                              "give the preference loss once")
        loss = configured
    if loss is None:
        if section.reference is not None:
            raise ConfigError("preference.reference: set preference.loss too (dpo, ipo, hinge, simpo or orpo)")
        return None
    reference = section.reference or ("precomputed" if loss.needs_reference else "none")
    if reference not in REFERENCES:
        raise ConfigError(f"preference.reference: {reference!r} is not one of {', '.join(REFERENCES)}")
    if loss.needs_reference and reference == "none":
        raise ConfigError(f"preference.reference: {loss.loss} compares the policy with a reference model; use "
                          "precomputed or model (or a loss without one: simpo, orpo)")
    if not loss.needs_reference and reference != "none":
        raise ConfigError(f"preference.reference: {loss.loss} uses no reference model; leave it out")
    if config.data.packing:
        raise ConfigError("data.packing: preference pairs are not packed (a pair's two sequences are scored "
                          "whole); set data.packing=false")
    if config.memory.loss_chunk_tokens:
        raise ConfigError("loss_chunk_tokens: preference losses need each sequence's log-probability from whole "
                          "logits; set loss_chunk_tokens=0")
    return PreferenceSettings(loss, reference)
