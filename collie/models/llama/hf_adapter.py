"""HF ↔ collie names for LLaMA 1/2/3 and the families that store LLaMA's names (Qwen2, Mistral):
transformers' usual layout. HF's q/k layout already matches our rotate-half RoPE, so no
permutation is needed and every tensor maps one to one."""

from __future__ import annotations

from collie.models.hf_adapter import TransformersLayoutAdapter


class LlamaHFAdapter(TransformersLayoutAdapter):
    architecture = "LlamaForCausalLM"


class Qwen2HFAdapter(TransformersLayoutAdapter):
    architecture = "Qwen2ForCausalLM"


class MistralHFAdapter(TransformersLayoutAdapter):
    architecture = "MistralForCausalLM"
