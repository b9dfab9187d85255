"""InternLM2 / 2.5: the LLaMA network with InternLM2's names and fused q/k/v."""

from __future__ import annotations

import dataclasses

from collie.models.internlm2.config import InternLM2Config
from collie.models.internlm2.hf_adapter import InternLM2HFAdapter
from collie.models.llama.spec import LLAMA, SHAPES, shape_config_of

INTERNLM2 = dataclasses.replace(LLAMA, name="internlm2", model_types=("internlm2",), adapter=InternLM2HFAdapter(),
                                config_cls=InternLM2Config, shapes=SHAPES,
                                shape_config=shape_config_of(InternLM2Config, bias=False))
