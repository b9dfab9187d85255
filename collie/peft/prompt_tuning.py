"""Prompt tuning: n trained input embeddings in front of every sequence, the base frozen.

Nothing outside this file knows: hooks on the model put the prompt in front inside forward,
as peft does. On a sequence's first pass (no KV cache, or an empty one) the input ids become
embeddings with the prompt's n in front (`inputs_embeds`), the attention mask gets n leading
ones (on every pass: it covers the whole past), labels n leading -100, given position ids
shift by n, an empty KV cache gets room for n more positions, and the logits lose the prompt's
n positions again, so callers see logits aligned with their own input ids. The prompt is a
parameter of the model (`prompt.weight`), so data and tensor parallel treat it as any other.
Files are peft's: `adapter_model.safetensors` holds `prompt_embeddings`.
"""

from __future__ import annotations

import inspect
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
from collie.models.base import is_meta, load_tokenizer, model_source
from collie.models.hf_io import iter_hf_tensors
from collie.models.init import named_generator
from collie.models.loss import IGNORE_INDEX
from collie.peft.adapter_files import base_model_record
from collie.tensors import copy_whole_into, full_tensor

PROMPT_PARAM = "prompt.weight"
PEFT_KEY = "prompt_embeddings"
WEIGHTS_FILE = "adapter_model.safetensors"


class PromptEmbedding(nn.Module):
    def __init__(self, num_virtual_tokens: int, hidden: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.length = num_virtual_tokens  # a plain int: the weight may be sharded or empty
        self.weight = nn.Parameter(torch.empty(num_virtual_tokens, hidden, dtype=dtype, device=device))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] -> [batch, n + seq, hidden]: the prompt in front, in `embeds`' dtype."""
        prompt = self.weight.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        return torch.cat([prompt, embeds], dim=1)


class PromptInFront:
    """The forward hooks `attach_prompt` puts on the model (see the module's docstring). They
    are registered on the single-device model before `parallelize`, so they run inside whatever
    wraps it (DDP calls the model; FSDP's own hooks unshard first, being prepended)."""

    def __init__(self, model: nn.Module, spec, n: int) -> None:
        self.spec, self.n = spec, n
        # The forward's parameter names, to read positional arguments as keywords.
        self.names = list(inspect.signature(model.forward).parameters)
        self.first_pass = False  # set before forward, read after it: did the prompt go in front?

    def before(self, model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = {**dict(zip(self.names, args)), **kwargs}
        n, cache = self.n, kwargs.get("kv_cache")
        self.first_pass = cache is None or cache.length == 0
        mask = kwargs.get("attention_mask")
        if mask is not None:  # the mask covers the whole past, the prompt included
            kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
        positions = kwargs.get("position_ids")
        if positions is not None:
            positions = positions + n
            if self.first_pass:
                start = torch.arange(n, device=positions.device, dtype=positions.dtype)
                positions = torch.cat([start.expand(positions.shape[0], n), positions], dim=1)
            kwargs["position_ids"] = positions
        if not self.first_pass:
            return (), kwargs
        if cache is not None:
            # Callers size a cache for their own tokens; nothing is allocated before the first
            # write (KVCache), so the prompt's positions are added here, once.
            cache.max_len += n
        embeds = kwargs.pop("inputs_embeds", None)
        input_ids = kwargs.pop("input_ids", None)
        if embeds is None:
            embeds = self.spec.edge(model, "embedding")(input_ids)
        dtype = getattr(model, "compute_dtype", None) or embeds.dtype
        kwargs["inputs_embeds"] = model.prompt(embeds.to(dtype))
        labels = kwargs.get("labels")
        if labels is not None:
            kwargs["labels"] = torch.cat([labels.new_full((labels.shape[0], n), IGNORE_INDEX), labels], dim=1)
        return (), kwargs

    def after(self, model: nn.Module, args: tuple, output):
        if self.first_pass and getattr(output, "logits", None) is not None:
            output.logits = output.logits[:, self.n:]  # aligned with the caller's input ids
        self.first_pass = False
        return output


def prompt_length(model: nn.Module) -> int:
    """The positions a trained prompt takes in front of every sequence (0: none), so that
    whoever bounds a sequence's length (serving's context) can leave room for them."""
    return sum(module.length for module in model.modules() if isinstance(module, PromptEmbedding))


@dataclass
class PromptRun:
    settings: PromptSettings
    # The whole prompt to start from (an init text's embeddings, or a saved adapter).
    start_from: Optional[torch.Tensor] = None

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
    """Freeze the model and give it a prompt, put in front inside its forward; reads where the
    prompt starts from now, while the model is still whole."""
    if spec.position_ids is not None:
        raise ConfigError("peft.type: prompt tuning needs a family whose positions follow the attention mask; "
                          f"{type(model).__name__} derives them from its tokens")
    if not spec.supports_model_parallel:
        raise ConfigError(f"peft.type: prompt tuning runs on collie's model families; "
                          f"{getattr(model.config, 'model_type', 'this model')!r} runs as transformers' own class "
                          "(use peft.type=lora)")
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
    hooks = PromptInFront(model, spec, settings.num_virtual_tokens)
    model.register_forward_pre_hook(hooks.before, with_kwargs=True)
    model.register_forward_hook(hooks.after)
    return PromptRun(settings, start_from)


def write_prompt(path: str, prompt: torch.Tensor, settings: PromptSettings, dims, base_model: Optional[str]) -> None:
    os.makedirs(path, exist_ok=True)
    save_file({PEFT_KEY: prompt.contiguous()}, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    settings.to_peft(dims.hidden, dims.heads, dims.layers, base_model_record(base_model)).save_pretrained(path)


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
    weights = config.model or model_source(model)
    source = config.tokenizer or weights
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
    for hf_name, tensor in iter_hf_tensors(storage.local_copy(weights)):
        for name, part in spec.adapter.split(hf_name, tensor, model.config):
            if name == wanted:
                return part[ids].float()
    raise ConfigError(f"peft.prompt_init_text: {weights} holds no embedding ({wanted})")
