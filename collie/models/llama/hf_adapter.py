"""HF ↔ collie names for the LLaMA family.

Our module names are HF's without the `model.` prefix (so PEFT `target_modules` such as
`q_proj` mean the same thing), and HF's q/k layout already matches our rotate-half RoPE,
so no permutation is needed and every tensor maps one to one.
"""

from __future__ import annotations

from typing import Optional

from collie.models.hf_adapter import HFAdapter

# Checkpoint entries that are derived state, not weights.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


class LlamaHFAdapter(HFAdapter):
    architecture = "LlamaForCausalLM"

    def to_hf_name(self, name: str) -> str:
        return name if name.startswith("lm_head.") else "model." + name

    def from_hf_name(self, hf_name: str) -> Optional[str]:
        if hf_name.endswith(_DERIVED_SUFFIXES):
            return None
        if hf_name.startswith("model."):
            return hf_name[len("model."):]
        return hf_name


class Qwen2HFAdapter(LlamaHFAdapter):
    architecture = "Qwen2ForCausalLM"


class MistralHFAdapter(LlamaHFAdapter):
    architecture = "MistralForCausalLM"
