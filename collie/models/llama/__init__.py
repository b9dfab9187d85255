from collie.models.llama.model import LlamaForCausalLM

__all__ = ["LlamaForCausalLM"]
