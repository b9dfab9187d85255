"""Parameter-efficient fine-tuning: LoRA adapters under every parallel layout, in peft's format."""

from collie.config.peft_settings import LoraSettings
from collie.peft.lora import LoraLinear, add_lora, merge_adapters

__all__ = ["LoraLinear", "LoraSettings", "add_lora", "merge_adapters"]
