"""The state-dict names PEFT adds to a model (LoRA's A and B, prompt tuning's prompt).

The convention lives here, below both the models and `collie.peft`, so that saving an HF
directory can leave adapters out without the models importing the code that adds them.
"""

from __future__ import annotations

import re

from torch import nn

# LoRA's A and B, and prompt tuning's prompt: what PEFT adds to a model's state dict.
ADAPTER_NAME = re.compile(r"(\.lora_[AB]\.weight|^prompt\.weight)$")
_LORA_NAME = re.compile(r"\.lora_[AB]\.weight$")


def is_adapter_name(name: str) -> bool:
    return ADAPTER_NAME.search(name) is not None


def has_lora_adapters(model: nn.Module) -> bool:
    """Whether LoRA layers were added (their A and B matrices are among the parameters)."""
    return any(_LORA_NAME.search(name) for name, _ in model.named_parameters())
