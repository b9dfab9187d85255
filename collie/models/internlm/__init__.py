"""InternLM (v1): its config, checkpoint names and spec; CoLLiE's class names exported by path
(see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"InternLMForCausalLM": "collie.models.internlm.model:InternLMForCausalLM",
            "InternLMLayer": "collie.models.internlm.model:InternLMLayer"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
