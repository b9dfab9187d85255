"""A process that trains does not import the serving stack (FastAPI, uvicorn, pydantic: 20 MB
resident in every training process), yet CoLLiE's serving names still resolve where CoLLiE put
them."""

from __future__ import annotations

import subprocess
import sys

SERVING = ("fastapi", "uvicorn", "starlette", "pydantic")


def _imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {SERVING!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_training_imports_no_serving_stack() -> None:
    assert _imported_after("import collie, collie.trainer, collie.cli") == []


def test_serving_names_resolve_on_first_use() -> None:
    code = ("import collie, collie.controller, collie.utils\n"
            "assert collie.Server is collie.controller.Server\n"
            "assert collie.GradioProvider is collie.utils.GradioProvider and collie.BaseProvider and "
            "collie.DashProvider and collie._GenerationStreamer\n"
            "assert {'Server', 'BaseProvider'} <= set(dir(collie))")
    assert _imported_after(code) == list(SERVING)
