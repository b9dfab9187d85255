"""The LoRA settings of a run, from the `peft:` section or from a `peft.LoraConfig`, and back
to a `peft.LoraConfig` for the files peft reads."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

from collie.config import ConfigError

# The attention query and value projections: peft's default for LLaMA-like models.
DEFAULT_TARGETS = ("q_proj", "v_proj")
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # A list of module names (suffix match, as peft), a regular expression (full match) or "all-linear".
    target_modules: Union[tuple[str, ...], str] = DEFAULT_TARGETS
    rslora: bool = False
    # Per-module rank / alpha (peft's patterns: a key matches a module name ending with it).
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    adapter: Optional[str] = None

    def targets(self, *names: str) -> bool:
        """Whether a module known by any of `names` (ours, the checkpoint's) gets an adapter."""
        if self.target_modules == ALL_LINEAR:
            return True
        if isinstance(self.target_modules, str):
            return any(re.fullmatch(self.target_modules, name) for name in names)
        return any(name == t or name.endswith("." + t) for name in names for t in self.target_modules)

    def rank_and_alpha(self, *names: str) -> tuple[int, float]:
        return _pattern(self.rank_pattern, names, self.r), _pattern(self.alpha_pattern, names, self.alpha)

    def scaling(self, rank: int, alpha: float) -> float:
        return alpha / math.sqrt(rank) if self.rslora else alpha / rank

    def to_peft(self, target_modules: list[str], base_model: Optional[str], rank_pattern: dict,
                alpha_pattern: dict):
        """The `peft.LoraConfig` that describes adapters written with these settings."""
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=target_modules,
                          use_rslora=self.rslora, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
                          bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model)


def lora_settings(config) -> Optional[LoraSettings]:
    """The run's LoRA settings, or None when it trains every parameter."""
    if config.peft_config is not None:
        return from_peft_config(config.peft_config, config.peft.adapter)
    section = config.peft
    if section.type == "none":
        return None
    targets = section.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS
    elif not isinstance(targets, str):
        targets = tuple(str(t) for t in targets)
    return LoraSettings(r=section.r, alpha=float(section.alpha), dropout=section.dropout, target_modules=targets,
                        rslora=section.rslora, adapter=section.adapter)


def from_peft_config(peft_config, adapter: Optional[str] = None) -> LoraSettings:
    """A `peft.LoraConfig` as collie's settings; features collie does not implement are refused
    by name instead of being ignored."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("peft_config: the `peft` package is not installed (pip install peft)") from None
    if isinstance(peft_config, Mapping):
        raise ConfigError("peft_config: takes a peft config object (peft.LoraConfig); in YAML or key=value "
                          "overrides use the `peft:` section (peft.type=lora peft.r=8)")
    if not isinstance(peft_config, LoraConfig):
        raise ConfigError(f"peft_config: {type(peft_config).__name__} is not supported; collie trains LoRA "
                          "adapters (peft.LoraConfig)")
    unsupported = {"bias": peft_config.bias != "none", "use_dora": peft_config.use_dora,
                   "modules_to_save": bool(peft_config.modules_to_save),
                   "layers_to_transform": peft_config.layers_to_transform is not None,
                   "fan_in_fan_out": peft_config.fan_in_fan_out,
                   "init_lora_weights": peft_config.init_lora_weights is not True}
    for name, used in unsupported.items():
        if used:
            raise ConfigError(f"peft_config.{name}: {getattr(peft_config, name)!r} is not supported by collie's "
                              "LoRA (supported: r, lora_alpha, lora_dropout, target_modules, use_rslora, "
                              "rank_pattern, alpha_pattern)")
    targets = peft_config.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS
    elif not isinstance(targets, str):
        targets = tuple(sorted(targets))
    return LoraSettings(r=peft_config.r, alpha=float(peft_config.lora_alpha), dropout=peft_config.lora_dropout,
                        target_modules=targets, rslora=peft_config.use_rslora,
                        rank_pattern=dict(peft_config.rank_pattern or {}),
                        alpha_pattern=dict(peft_config.alpha_pattern or {}), adapter=adapter)


def _pattern(patterns: dict, names: tuple[str, ...], default):
    for key, value in patterns.items():
        if any(re.match(rf"(.*\.)?({key})$", name) for name in names):
            return value
    return default
