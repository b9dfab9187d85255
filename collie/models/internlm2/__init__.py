"""InternLM2 / 2.5: config, checkpoint names and spec; CoLLiE's class name exported by path
(see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"InternLM2ForCausalLM": "collie.models.internlm2.model:InternLM2ForCausalLM"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
