"""Parameter-efficient fine-tuning: LoRA adapters under every parallel layout, in peft's format."""

from collie.peft.lora import LoraLinear, add_lora, merge_adapters
from collie.peft.settings import LoraSettings

__all__ = ["LoraLinear", "LoraSettings", "add_lora", "merge_adapters"]
