"""Parameter-efficient fine-tuning: LoRA adapters under every parallel layout, in peft's format."""

from collie.config.peft_settings import LoraSettings
from collie.peft.lora import LoraLinear, adapters_disabled, add_lora, merge_adapters

__all__ = ["LoraLinear", "LoraSettings", "adapters_disabled", "add_lora", "merge_adapters"]
