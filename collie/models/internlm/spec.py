"""InternLM (v1): the LLaMA network with LLaMA's tensor names, biased attention and its own
config.json (`bias`, `rotary`)."""

from __future__ import annotations

import dataclasses

from collie.models.internlm.config import InternLMConfig
from collie.models.llama.hf_adapter import LlamaHFAdapter
from collie.models.llama.spec import LLAMA, SHAPES, shape_config_of


class InternLMHFAdapter(LlamaHFAdapter):
    architecture = "InternLMForCausalLM"


# InternLM v1 has no grouped key/value heads: its shapes leave that field out.
SHAPES_WITHOUT_GQA = {name: {k: v for k, v in fields.items() if k != "num_key_value_heads"}
                      for name, fields in SHAPES.items()}
INTERNLM = dataclasses.replace(LLAMA, name="internlm", model_types=("internlm",), adapter=InternLMHFAdapter(),
                               config_cls=InternLMConfig, shapes=SHAPES_WITHOUT_GQA,
                               shape_config=shape_config_of(InternLMConfig))
