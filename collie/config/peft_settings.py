"""The PEFT settings of a run (LoRA or prompt tuning), from the `peft:` section or from a
`peft` config object, and back to a `peft` config for the files peft reads."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

from collie.config.errors import ConfigError

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


@dataclass(frozen=True)
class PromptSettings:
    num_virtual_tokens: int = 20
    init_text: Optional[str] = None
    adapter: Optional[str] = None

    def to_peft(self, hidden: int, heads: int, layers: int, base_model: Optional[str]):
        """peft's config for trained prompts (written with RANDOM init: the init text mattered
        only before training, and TEXT would make peft load a tokenizer to read the file)."""
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.num_virtual_tokens, token_dim=hidden,
                                  num_transformer_submodules=1, num_attention_heads=heads, num_layers=layers,
                                  base_model_name_or_path=base_model)


def peft_settings(config) -> Union[LoraSettings, PromptSettings, None]:
    """The run's PEFT settings, or None when it trains every parameter."""
    if config.peft_config is not None:
        return from_peft_config(config.peft_config, config.peft.adapter)
    section = config.peft
    if section.type == "none":
        return None
    if section.type == "prompt_tuning":
        return PromptSettings(section.num_virtual_tokens, section.prompt_init_text, section.adapter)
    targets = section.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS
    elif not isinstance(targets, str):
        targets = tuple(str(t) for t in targets)
    return LoraSettings(r=section.r, alpha=float(section.alpha), dropout=section.dropout, target_modules=targets,
                        rslora=section.rslora, adapter=section.adapter)


def from_peft_config(peft_config, adapter: Optional[str] = None) -> Union[LoraSettings, PromptSettings]:
    """A `peft.LoraConfig` or `peft.PromptTuningConfig` as collie's settings; features collie
    does not implement are refused by name instead of being ignored."""
    try:
        from peft import LoraConfig, PromptTuningConfig
    except ImportError:
        raise ConfigError("peft_config: the `peft` package is not installed (pip install peft)") from None
    if isinstance(peft_config, Mapping):
        raise ConfigError("peft_config: takes a peft config object (peft.LoraConfig); in YAML or key=value "
                          "overrides use the `peft:` section (peft.type=lora peft.r=8)")
    if isinstance(peft_config, PromptTuningConfig):
        return _from_prompt_tuning_config(peft_config, adapter)
    if not isinstance(peft_config, LoraConfig):
        raise ConfigError(f"peft_config: {type(peft_config).__name__} is not supported; collie trains LoRA "
                          "adapters (peft.LoraConfig) and prompts (peft.PromptTuningConfig)")
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


def _from_prompt_tuning_config(peft_config, adapter: Optional[str]) -> PromptSettings:
    if peft_config.num_transformer_submodules not in (None, 1):
        raise ConfigError(f"peft_config.num_transformer_submodules: {peft_config.num_transformer_submodules} is not "
                          "supported (decoder-only models take 1)")
    init = str(getattr(peft_config.prompt_tuning_init, "value", peft_config.prompt_tuning_init))
    if init not in ("RANDOM", "TEXT"):
        raise ConfigError(f"peft_config.prompt_tuning_init: {init!r} is not supported (RANDOM or TEXT)")
    text = peft_config.prompt_tuning_init_text if init == "TEXT" else None
    return PromptSettings(peft_config.num_virtual_tokens, text, adapter)


def _pattern(patterns: dict, names: tuple[str, ...], default):
    for key, value in patterns.items():
        if any(re.match(rf"(.*\.)?({key})$", name) for name in names):
            return value
    return default
