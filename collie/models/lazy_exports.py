"""Class names a family package exports (CoLLiE's import paths, `from collie.models.llama import
LlamaForCausalLM`) without importing the classes when the package is imported.

The registry imports each family's `spec`, which runs the family package's `__init__` while
`collie.models.base` is still loading; the model classes subclass `CollieModel`, so importing
them there would go around a circle. A package names its classes by path ("package.module:Class",
as specs do) and they are imported on first use, through the module `__getattr__` of PEP 562.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package_globals: dict, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for a package whose `exports` map a name to "package.module:Class"."""
    package = package_globals["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        value = getattr(importlib.import_module(module), attribute)
        package_globals[name] = value  # found once; later lookups are plain attributes
        return value

    def __dir__() -> list[str]:
        return sorted(set(package_globals) | set(exports))

    return __getattr__, __dir__
