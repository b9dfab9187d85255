"""ChatGLM2/3 (and transformers' GLM): config, checkpoint names and specs; CoLLiE's class name
exported by path (see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"ChatGLM2ForCausalLM": "collie.models.chatglm2.model:ChatGLM2ForCausalLM"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
