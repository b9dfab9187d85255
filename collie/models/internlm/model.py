"""InternLM (v1) runs on the shared decoder network; its class carries CoLLiE's name so that
`InternLMForCausalLM.from_pretrained` accepts InternLM checkpoints only."""

from collie.models.common.decoder import DecoderLayer as InternLMLayer
from collie.models.common.decoder import LlamaForCausalLM

__all__ = ["InternLMForCausalLM", "InternLMLayer"]


class InternLMForCausalLM(LlamaForCausalLM):
    """The decoder network, as built for an InternLM config."""
