"""InternLM2 / 2.5: the decoder network with InternLM2's names and fused q/k/v."""

from __future__ import annotations

from collie.models.common.spec import decoder_spec, shape_config_of
from collie.models.internlm2.config import InternLM2Config
from collie.models.internlm2.hf_adapter import InternLM2HFAdapter

INTERNLM2 = decoder_spec(name="internlm2", model_types=("internlm2",), adapter=InternLM2HFAdapter(),
                         model="collie.models.internlm2.model:InternLM2ForCausalLM",
                         config_cls=InternLM2Config, shape_config=shape_config_of(InternLM2Config, bias=False))
