"""Prompt tuning: n trained input embeddings in front of every sequence, the base frozen.

The padder reserves the first n positions of every row (mask 1, label -100, before any left
padding, as peft lays them out), and the model puts the prompt's embeddings there when a
sequence starts (not on later decoding steps, which continue from the cache). The prompt is a
parameter of the model (`prompt.weight`), so data and tensor parallel treat it as any other.
Files are peft's: `adapter_model.safetensors` holds `prompt_embeddings`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from collie import storage
from collie.config import ConfigError
from collie.config.peft_settings import PromptSettings
from collie.dtypes import at_least_fp32
from collie.models.base import full_tensor, is_meta, load_tokenizer
from collie.models.hf_io import iter_hf_tensors
from collie.models.init import named_generator
from collie.tensors import copy_whole_into

PROMPT_PARAM = "prompt.weight"
PEFT_KEY = "prompt_embeddings"
WEIGHTS_FILE = "adapter_model.safetensors"


class PromptEmbedding(nn.Module):
    def __init__(self, num_virtual_tokens: int, hidden: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_virtual_tokens, hidden, dtype=dtype, device=device))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Embeddings whose first n positions (reserved by the padder) become the prompt."""
        n = self.weight.shape[0]
        prompt = self.weight.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
        return torch.cat([prompt, h[:, n:]], dim=1)


@dataclass
class PromptRun:
    settings: PromptSettings
    # The whole prompt to start from (an init text's embeddings, or a saved adapter).
    start_from: Optional[torch.Tensor] = None

    @property
    def virtual_tokens(self) -> int:
        return self.settings.num_virtual_tokens

    def initialise(self, module: nn.Module, seed: int) -> None:
        weight = module.prompt.weight
        start = self.start_from
        if start is None:  # peft's random init: an nn.Embedding's, N(0, 1)
            start = torch.randn(tuple(weight.shape), generator=named_generator(PROMPT_PARAM, seed))
        copy_whole_into(weight, start.to(weight.dtype))
        self.start_from = None

    def save(self, path: str, module: nn.Module, spec, runtime, base_model: Optional[str]) -> None:
        prompt = full_tensor(module.prompt.weight)
        if runtime.env.rank == 0:
            hf_config = getattr(module, "export_config", None) or module.config
            write_prompt(path, prompt, self.settings, spec.dims(hf_config), base_model)

    def record(self, base_model: Optional[str]) -> dict:
        return {"type": "prompt_tuning", "settings": asdict(self.settings), "base_model": base_model}


def attach_prompt(model: nn.Module, spec, settings: PromptSettings, config) -> PromptRun:
    """Freeze the model and give it a prompt; reads where the prompt starts from now, while
    the model is still whole."""
    dims = spec.dims(model.config)
    start_from = None
    if settings.adapter:
        start_from = read_prompt(settings.adapter, settings.num_virtual_tokens, dims.hidden)
    elif settings.init_text:
        start_from = _text_embeddings(model, spec, settings, config)
    for param in model.parameters():
        param.requires_grad_(False)
    weight = spec.edge(model, "embedding").weight
    model.prompt = PromptEmbedding(settings.num_virtual_tokens, dims.hidden, at_least_fp32(weight.dtype),
                                   weight.device)
    return PromptRun(settings, start_from)


def write_prompt(path: str, prompt: torch.Tensor, settings: PromptSettings, dims, base_model: Optional[str]) -> None:
    os.makedirs(path, exist_ok=True)
    save_file({PEFT_KEY: prompt.contiguous()}, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    settings.to_peft(dims.hidden, dims.heads, dims.layers, base_model).save_pretrained(path)


def read_prompt(path: str, num_virtual_tokens: int, hidden: int) -> torch.Tensor:
    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(file):
        raise ConfigError(f"peft.adapter: no {WEIGHTS_FILE} in {path!r}")
    tensors = load_file(file)
    if PEFT_KEY not in tensors:
        raise ConfigError(f"peft.adapter: {file} holds no {PEFT_KEY} (is it a prompt-tuning adapter?)")
    prompt = tensors[PEFT_KEY]
    if tuple(prompt.shape) != (num_virtual_tokens, hidden):
        raise ConfigError(f"peft.adapter: {file}: {PEFT_KEY} has shape {tuple(prompt.shape)}, the model expects "
                          f"({num_virtual_tokens}, {hidden})")
    return prompt


def _text_embeddings(model: nn.Module, spec, settings: PromptSettings, config) -> torch.Tensor:
    """peft's TEXT init: the embeddings of the text's tokens, repeated to the prompt's length."""
    source = config.tokenizer or config.model
    if not source:
        raise ConfigError("peft.prompt_init_text: needs a tokenizer (set `tokenizer` or `model`)")
    ids = load_tokenizer(source, config.trust_remote_code)(settings.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("peft.prompt_init_text: the text has no tokens")
    n = settings.num_virtual_tokens
    ids = torch.tensor((ids * (n // len(ids) + 1))[:n])
    embedding = spec.edge(model, "embedding").weight
    if not is_meta(model):
        return embedding.detach()[ids].float()
    # An empty model (multi-process loading): read the rows from its checkpoint.
    wanted = f"{spec.edge_name('embedding')}.weight"
    for hf_name, tensor in iter_hf_tensors(storage.local_copy(config.model)):
        for name, part in spec.adapter.split(hf_name, tensor, model.config):
            if name == wanted:
                return part[ids].float()
    raise ConfigError(f"peft.prompt_init_text: {config.model} holds no embedding ({wanted})")
