from collie.models.base import CausalLMOutput, CollieModel
from collie.models.common.decoder import LlamaForCausalLM
from collie.models.loss import GPTLMLoss

__all__ = ["CausalLMOutput", "CollieModel", "GPTLMLoss", "LlamaForCausalLM"]
