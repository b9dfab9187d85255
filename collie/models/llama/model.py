"""CoLLiE's `collie.models.llama.model`: LLaMA runs on the shared decoder network."""

from collie.models.common.decoder import DecoderLayer as LlamaLayer
from collie.models.common.decoder import LlamaForCausalLM

__all__ = ["LlamaForCausalLM", "LlamaLayer"]
