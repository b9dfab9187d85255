"""What every collie model shares: HF-format loading and saving, the family registry,
random initialisation and generation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from collie.distributed.shards import copy_whole_into
from collie.dtypes import DTYPES
from collie.models.hf_io import DEFAULT_MAX_SHARD_BYTES, iter_hf_tensors, save_hf_tensors


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None
    kv_cache: Any = None

    def __getitem__(self, key: str) -> Any:
        # CoLLiE returned dicts; `output["logits"]` keeps old scripts working.
        return getattr(self, key)


class HFAdapter:
    """Maps our parameter names to a family's HF names and back (None = not a weight)."""

    architecture: str = ""

    def to_hf(self, name: str) -> str:
        raise NotImplementedError

    def from_hf(self, hf_name: str) -> Optional[str]:
        raise NotImplementedError


_REGISTRY: dict[str, tuple[type, HFAdapter]] = {}


def register_family(model_type: str, model_cls: type, adapter: HFAdapter) -> None:
    _REGISTRY[model_type] = (model_cls, adapter)


def family_of(hf_config) -> tuple[type, HFAdapter]:
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[model_type]


def load_hf_config(path: str):
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path!r}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"no config.json in {path!r} (expected a Hugging Face model directory)")
    return AutoConfig.from_pretrained(path, local_files_only=True)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """An HF tokenizer from a local directory (never from a hub); code shipped with it runs
    only when `trust_remote_code` is set."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path!r}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json",
                                                                    "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json, tokenizer_config.json, …) in {path!r}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def apply_collie_settings(hf_config, collie_config) -> None:
    """Settings of a CollieConfig that change the architecture's behaviour."""
    if collie_config is not None and collie_config.dropout > 0:
        hf_config.attention_dropout = collie_config.dropout


class CollieModel(nn.Module):
    config: Any

    # -- construction -------------------------------------------------------
    @classmethod
    def from_config(cls, config, seed: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                    init_method: Optional[str] = None) -> "CollieModel":
        """A randomly initialised model; the same seed gives the same weights everywhere.

        `config` is an HF config, or a CollieConfig holding one (`model_config`), whose `seed`,
        `param_dtype` and `init_method` then apply unless given here."""
        hf_config = getattr(config, "model_config", None) or config
        collie_config = config if hf_config is not config else None
        apply_collie_settings(hf_config, collie_config)
        model_cls = family_of(hf_config)[0] if cls is CollieModel else cls
        model = _materialize(model_cls, hf_config, dtype or param_dtype(collie_config))
        if seed is None:
            seed = collie_config.seed if collie_config is not None else 0
        model.reset_parameters(init_method or getattr(collie_config, "init_method", "normal"), seed)
        return model

    @classmethod
    def from_pretrained(cls, path: str, config=None, dtype: Optional[torch.dtype] = None) -> "CollieModel":
        """Load an HF directory. `config` is an optional CollieConfig (dropout, low_cpu_mem_usage).

        With `low_cpu_mem_usage` (the default) the model is built on the meta device and each
        checkpoint tensor is copied into place as it is read: peak memory ≈ one model. Under
        a multi-process launch, with a CollieConfig, loading is deferred to the Trainer: it
        splits and shards the still-empty model first, then each rank copies in only its own
        shards, one checkpoint tensor at a time (no rank ever holds the whole model).
        """
        hf_config = load_hf_config(path)
        apply_collie_settings(hf_config, config)
        model_cls, adapter = family_of(hf_config)
        if cls is not CollieModel and not issubclass(model_cls, cls):
            raise ValueError(f"{path!r} holds a {hf_config.model_type!r} model, not a {cls.__name__}")
        dtype = dtype or param_dtype(config)
        if config is not None:
            config.model_config = hf_config
        if config is not None and config.low_cpu_mem_usage and _launched_processes() > 1 and \
                not getattr(hf_config, "tie_word_embeddings", False):
            with torch.device("meta"):
                model = model_cls(hf_config)
            model.to(dtype)
            model.hf_source = path  # collie.distributed.parallelize loads it, shard by shard
            return model
        if config is None or config.low_cpu_mem_usage:
            model = _materialize(model_cls, hf_config, dtype)
        else:
            model = model_cls(hf_config).to(dtype)
        model.load_hf_weights(path, adapter)
        return model

    def load_hf_weights(self, path: str, adapter: Optional[HFAdapter] = None, partial: bool = False) -> None:
        """Copy an HF checkpoint's tensors into this model, whose parameters may be DTensor
        shards (each rank copies its own slice). `partial`: the model is one pipeline stage,
        so tensors of other stages are skipped."""
        adapter = adapter or family_of(self.config)[1]
        params = self.state_dict(keep_vars=True)
        missing = set(self.hf_state_names())
        unexpected = []
        with torch.no_grad():
            for hf_name, tensor in iter_hf_tensors(path):
                name = adapter.from_hf(hf_name)
                if name is None:
                    continue
                if name not in params:
                    if not partial:
                        unexpected.append(hf_name)
                    continue
                target = params[name]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"{path}: {hf_name} has shape {tuple(tensor.shape)}, the model expects "
                                     f"{tuple(target.shape)} (does config.json match the weights?)")
                copy_whole_into(target, tensor.to(target.dtype))
                missing.discard(name)
        if unexpected:
            raise ValueError(f"{path}: weights the model does not have: {', '.join(unexpected[:5])}")
        if missing:
            raise ValueError(f"{path}: weights missing from the checkpoint: {', '.join(sorted(missing)[:5])}")

    # -- saving -------------------------------------------------------------
    def hf_state_names(self) -> list[str]:
        """Our names of the tensors an HF checkpoint holds (a tied head is stored once)."""
        return [name for name, _ in self._hf_items()]

    def _hf_items(self) -> Iterator[tuple[str, torch.Tensor]]:
        tied = getattr(self.config, "tie_word_embeddings", False)
        for name, tensor in self.state_dict().items():
            if tied and name == "lm_head.weight":
                continue
            yield name, tensor

    def save_pretrained(self, path: str, dtype: Optional[torch.dtype] = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        """Write config.json and safetensors weights that `transformers` loads as they are.

        Works from any parallel layout: each sharded tensor is gathered in turn (every rank
        must call this), and only rank 0 writes, one shard at a time.
        """
        adapter = family_of(self.config)[1]
        is_main = not dist.is_initialized() or dist.get_rank() == 0
        tensors = ((adapter.to_hf(name), full_tensor(t, dtype)) for name, t in self._hf_items())
        if not is_main:
            for _ in tensors:  # take part in the gathers, write nothing
                pass
            return
        save_hf_tensors(path, tensors, max_shard_bytes)
        save_hf_config(self.config, path, adapter, dtype or next(self.parameters()).dtype)

    def tie_weights(self) -> None:
        if getattr(self.config, "tie_word_embeddings", False) and self.lm_head is not None:
            self.lm_head.weight = self.embed_tokens.weight

    def reset_parameters(self, init_method: str = "normal", seed: int = 0) -> None:
        raise NotImplementedError

    # -- generation ---------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 **kwargs: Any) -> torch.Tensor:
        """Prompt + continuation ids (see `collie.serve.generation.generate` for options)."""
        from collie.serve.generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)


def _launched_processes() -> int:
    from collie.distributed.env import read_launch_env

    return int(read_launch_env().get("WORLD_SIZE", "1"))


def _materialize(model_cls: type, hf_config, dtype: torch.dtype) -> "CollieModel":
    """Uninitialised storage in `dtype` directly (cast while still on meta), so a bf16 7B
    model never passes through an fp32 copy."""
    with torch.device("meta"):
        model = model_cls(hf_config)
    model.to(dtype)
    model.to_empty(device="cpu")
    model.tie_weights()
    return model


def param_dtype(config) -> torch.dtype:
    """The storage dtype a CollieConfig asks for; "auto" is fp32 (full-precision master weights)."""
    name = getattr(config, "param_dtype", "auto") if config is not None else "auto"
    return DTYPES.get(name, torch.float32)


def full_tensor(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """A whole (gathered) tensor on the CPU, from a plain tensor or any DTensor sharding."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    tensor = tensor.detach()
    return (tensor if dtype is None else tensor.to(dtype)).cpu()


def save_hf_config(hf_config, path: str, adapter: HFAdapter, dtype: torch.dtype) -> None:
    hf_config.architectures = [adapter.architecture]
    # transformers 5 names it `dtype`; 4.x reads `torch_dtype`.
    setattr(hf_config, "dtype" if "dtype" in hf_config.to_dict() else "torch_dtype", dtype)
    hf_config.save_pretrained(path)
