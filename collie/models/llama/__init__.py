from collie.models.base import register_family
from collie.models.llama.hf_adapter import LlamaHFAdapter, Qwen2HFAdapter
from collie.models.llama.model import LlamaForCausalLM

register_family("llama", LlamaForCausalLM, LlamaHFAdapter())
register_family("qwen2", LlamaForCausalLM, Qwen2HFAdapter())

__all__ = ["LlamaForCausalLM"]
