"""CoLLiE's server example, in CoLLiE's own API, running on collie: a LLaMA served on its own — no
training — through a web page where people type prompts and read the model's answers.
`Server(model, data_provider).run()` serves collie's OpenAI-compatible endpoint (on a free local
port) and opens the provider's page over it (Gradio, on port 7878 here; `DashProvider` opens a Dash
page instead) until SIGTERM or Ctrl-C, then answers what is in flight and returns.

    python examples/collie_api/server.py

`pretrained_model` is a hub id read from the local Hugging Face cache (collie downloads nothing), or
a model directory. The page opens with the provider's `generation_config` (here up to 250 new
tokens, greedy).
"""

import torch
from transformers import AutoTokenizer, GenerationConfig

from collie.config import CollieConfig
from collie.controller.server import Server
from collie.models.llama.model import LlamaForCausalLM
from collie.utils.data_provider import GradioProvider

pretrained_model = "openlm-research/open_llama_13b"

config = CollieConfig.from_pretrained(pretrained_model, trust_remote_code=True)
config.pp_size = 1
config.tp_size = 1
model = LlamaForCausalLM.from_pretrained(pretrained_model, config=config)
model = model.to("cuda" if torch.cuda.is_available() else "cpu")
tokenizer = AutoTokenizer.from_pretrained(pretrained_model)

data_provider = GradioProvider(tokenizer=tokenizer)
data_provider.generation_config = GenerationConfig(max_new_tokens=250)
server = Server(model, data_provider)
server.run()
