"""collie: fine-tune and further pre-train LLMs on the hardware you have."""

from collie.config import CollieConfig, ConfigError
from collie.models import CausalLMOutput, CollieModel, GPTLMLoss, LlamaForCausalLM

__all__ = ["CausalLMOutput", "CollieConfig", "CollieModel", "ConfigError", "GPTLMLoss", "LlamaForCausalLM"]
__version__ = "0.1.0"
