"""What a served model is called and the context it answers within: shared by `collie serve`,
`collie generate` and serving while training, without the HTTP stack (`collie.serve.http`)."""

from __future__ import annotations

import os
import re
from typing import Optional

from torch import nn

from collie.peft.prompt_tuning import prompt_length


def model_name(source: str, given: Optional[str]) -> str:
    """The model id clients ask for: `given`, else the hub id of a Hugging Face cache snapshot
    (`…/models--org--name/snapshots/<revision>` → `org/name`), else the directory's (or URL's)
    last part."""
    if given:
        return given
    cached = _HUB_SNAPSHOT.search(source)
    if cached:
        return cached.group(1).replace("--", "/")
    return os.path.basename(os.path.normpath(source.split("://", 1)[-1])) or "model"


_HUB_SNAPSHOT = re.compile(r"models--([^/]+?)/snapshots/[^/]+/?$")


def context_length(dims, tokenizer, model: nn.Module) -> int:
    """The positions a request may use: those the model was built for (its family's dims, else
    what the tokenizer says), less those a trained prompt takes in front of every sequence."""
    positions = dims.max_positions or int(min(tokenizer.model_max_length, 1 << 20))
    return positions - prompt_length(model)
