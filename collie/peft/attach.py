"""The one entry point the Trainer calls: the configured PEFT method on the model."""

from __future__ import annotations

from typing import Optional, Union

import torch

from collie.config.peft_settings import LoraSettings, peft_settings
from collie.peft.lora_run import LoraRun, attach_lora
from collie.peft.prompt_tuning import PromptRun, attach_prompt

PeftRun = Union[LoraRun, PromptRun]


def attach_peft(model: torch.nn.Module, spec, config) -> Optional[PeftRun]:
    """Adapters (LoRA) or a prompt on the single-device, possibly empty model, its base frozen;
    None when the run trains every parameter. Call `initialise` once the model is parallelized."""
    settings = peft_settings(config)
    if settings is None:
        return None
    if isinstance(settings, LoraSettings):
        return attach_lora(model, spec, settings)
    return attach_prompt(model, spec, settings, config)
