"""InternLM2 / 2.5 run on the shared decoder network; the class carries CoLLiE's name so that
`InternLM2ForCausalLM.from_pretrained` accepts InternLM2 checkpoints only."""

from collie.models.common.decoder import LlamaForCausalLM

__all__ = ["InternLM2ForCausalLM"]


class InternLM2ForCausalLM(LlamaForCausalLM):
    """The decoder network, as built for an InternLM2 config."""
