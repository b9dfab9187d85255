"""CoLLiE's import path for moss-moon-003: the MOSS family's class (`collie.models.moss`) under
CoLLiE's name, exported by path (see `collie.models.lazy_exports`)."""

from collie.models.lazy_exports import lazy_exports

_EXPORTS = {"Moss003MoonForCausalLM": "collie.models.moss_moon.model:Moss003MoonForCausalLM"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
