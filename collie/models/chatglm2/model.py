"""ChatGLM2/3 run on the shared decoder network; the class carries CoLLiE's name so that
`ChatGLM2ForCausalLM.from_pretrained` accepts ChatGLM2/3 checkpoints only."""

from collie.models.common.decoder import LlamaForCausalLM

__all__ = ["ChatGLM2ForCausalLM"]


class ChatGLM2ForCausalLM(LlamaForCausalLM):
    """The decoder network, as built for a ChatGLM2/3 config."""
