"""MOSS (moss-moon-003, which is what Hugging Face's `MossForCausalLM` is): its blocks, config,
checkpoint names and spec; the class exported by path (see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"MossForCausalLM": "collie.models.moss.model:MossForCausalLM"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
