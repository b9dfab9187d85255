"""ChatGLM-6B (v1): its blocks, positions, config, checkpoint names and spec; CoLLiE's class name
exported by path (see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"ChatGLMForCausalLM": "collie.models.chatglm.model:ChatGLMForCausalLM"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
