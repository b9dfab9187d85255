"""InternLM (v1): the decoder network with transformers' usual tensor names, biased attention
and its own config.json (`bias`, `rotary`)."""

from __future__ import annotations

from collie.models.common.spec import SHAPES, decoder_spec, shape_config_of
from collie.models.hf_adapter import TransformersLayoutAdapter
from collie.models.internlm.config import InternLMConfig


class InternLMHFAdapter(TransformersLayoutAdapter):
    architecture = "InternLMForCausalLM"


# InternLM v1 has no grouped key/value heads: its shapes leave that field out.
SHAPES_WITHOUT_GQA = {name: {k: v for k, v in fields.items() if k != "num_key_value_heads"}
                      for name, fields in SHAPES.items()}
INTERNLM = decoder_spec(name="internlm", model_types=("internlm",), adapter=InternLMHFAdapter(),
                        model="collie.models.internlm.model:InternLMForCausalLM",
                        config_cls=InternLMConfig, shapes=SHAPES_WITHOUT_GQA,
                        shape_config=shape_config_of(InternLMConfig))
