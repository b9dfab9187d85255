from collie.models.base import CausalLMOutput, CollieModel, CollieModelForCausalLM
from collie.models.chatglm.model import ChatGLMForCausalLM
from collie.models.chatglm2.model import ChatGLM2ForCausalLM
from collie.models.common.decoder import LlamaForCausalLM
from collie.models.internlm.model import InternLMForCausalLM
from collie.models.internlm2.model import InternLM2ForCausalLM
from collie.models.loss import GPTLMLoss
from collie.models.moss.model import MossForCausalLM
from collie.models.moss_moon.model import Moss003MoonForCausalLM

__all__ = ["CausalLMOutput", "ChatGLM2ForCausalLM", "ChatGLMForCausalLM", "CollieModel", "CollieModelForCausalLM",
           "GPTLMLoss", "InternLM2ForCausalLM", "InternLMForCausalLM", "LlamaForCausalLM", "Moss003MoonForCausalLM",
           "MossForCausalLM"]
