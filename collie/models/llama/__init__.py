"""LLaMA 1/2/3 (and Qwen2, Mistral, which store LLaMA's names): their checkpoint names and specs.
The network is the shared decoder, `collie.models.common.decoder.LlamaForCausalLM`; CoLLiE's
names for it (`LlamaForCausalLM`, `LlamaLayer`) are exported by path, since the registry imports
this package's spec below the model classes (see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"LlamaForCausalLM": "collie.models.llama.model:LlamaForCausalLM",
            "LlamaLayer": "collie.models.llama.model:LlamaLayer"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
