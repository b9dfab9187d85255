"""What every collie model shares: HF-format loading and saving, random initialisation and
generation.

The family of a config is looked up in `collie.models.registry`, which holds the specs only:
a spec names its model class by path, so the registry (and this module) never import the
model classes that subclass `CollieModel` here.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from collie import storage
from collie.config import CollieConfig
from collie.config.model_path import resolve_model_path
from collie.config.quantization import quant_settings
from collie.dtypes import DTYPES
from collie.generation import GenerationMixin
from collie.host_memory import return_freed_memory_to_os
from collie.launch_env import launched_processes
from collie.models.adapter_names import has_lora_adapters, is_adapter_name
from collie.models.auto.spec import load_auto
from collie.models.hf_io import DEFAULT_MAX_SHARD_BYTES, iter_hf_tensors
from collie.models.hf_writer import write_hf_model
from collie.models.registry import config_class_for, spec_for
from collie.models.vocabulary import checkpoint_rows_grown, resize_vocabulary
from collie.tensors import copy_whole_into, full_tensor


@dataclass
class CausalLMOutput:
    logits: Optional[torch.Tensor]
    loss: Optional[torch.Tensor] = None
    kv_cache: Any = None
    # What a pipeline stage without the head returns instead of logits.
    hidden_states: Optional[torch.Tensor] = None

    def __getitem__(self, key: str) -> Any:
        # CoLLiE returned dicts; `output["logits"]` keeps old scripts working.
        return getattr(self, key)


def load_hf_config(path: str):
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path!r}")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"no config.json in {path!r} (expected a Hugging Face model directory)")
    with open(config_file) as f:
        fields = json.load(f)
    # Families transformers does not ship are read with collie's config class, never remote code.
    config_cls = config_class_for(fields)  # an unknown type fails here, in collie's words
    if config_cls is not None:
        return config_cls.from_pretrained(path, local_files_only=True)
    return AutoConfig.from_pretrained(path, local_files_only=True)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """An HF tokenizer from a local directory (never from a hub); code shipped with it runs
    only when `trust_remote_code` is set."""
    from transformers import AutoTokenizer

    path = storage.local_copy(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path!r}")
    if not any(os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json",
                                                                    "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"no tokenizer files (tokenizer.json, tokenizer_config.json, …) in {path!r}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def training_config(hf_config, collie_config):
    """The HF config the model is built from: a copy with the CollieConfig's training-only
    settings (dropout) applied, so they never reach the caller's config or an export."""
    if collie_config is None or not collie_config.dropout > 0:
        return hf_config
    hf_config = copy.deepcopy(hf_config)
    hf_config.attention_dropout = collie_config.dropout
    return hf_config


class CollieModel(GenerationMixin, nn.Module):
    config: Any
    # The HF config an export writes: the architecture as loaded, without training-only settings.
    export_config: Any = None
    # The dtype activations are computed in (None: the parameters' dtype); parameters are cast
    # to it where they are used (`collie.models.layers`).
    compute_dtype: Optional[torch.dtype] = None
    # > 0: a forward given labels computes its loss in chunks of this many tokens (and no logits).
    loss_chunk_tokens: int = 0
    # The HF directory (or URL) the weights come from, set by `from_pretrained`: a model still
    # empty (meta) under a multi-process launch is loaded from it once it is sharded.
    source: Optional[str] = None

    # -- construction -------------------------------------------------------
    @classmethod
    def from_config(cls, config, seed: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                    init_method: Optional[str] = None) -> "CollieModel":
        """A randomly initialised model; the same seed gives the same weights everywhere.

        `config` is an HF config, or a CollieConfig holding one (`model_config`), whose `seed`,
        `param_dtype` and `init_method` then apply unless given here; or, as in CoLLiE, a model
        directory (or hub id) whose CollieConfig is read."""
        if isinstance(config, str):
            config = CollieConfig.from_pretrained(config)
        hf_config = family_config(getattr(config, "model_config", None) or config)
        collie_config = config if getattr(config, "model_config", None) is not None else None
        model = _materialize(_model_class(cls, hf_config), hf_config, collie_config,
                             dtype or param_dtype(collie_config))
        if seed is None:
            seed = collie_config.seed if collie_config is not None else 0
        model.reset_parameters(init_method or getattr(collie_config, "init_method", "normal"), seed)
        return model

    @classmethod
    def from_pretrained(cls, path: str, config=None, dtype: Optional[torch.dtype] = None,
                        **settings: Any) -> "CollieModel":
        """Load an HF directory. `config` is an optional CollieConfig (dropout, param_dtype,
        low_cpu_mem_usage), read and never changed; the model records where it came from
        (`model.source`).

        CoLLiE's forms work too: `config` a model directory (or hub id) whose CollieConfig is
        read, with `settings` setting its fields (CoLLiE's keyword arguments); `settings` beside
        a CollieConfig set fields of the model's HF config (`use_cache=True`). CoLLiE's
        `process_exclusion` is accepted: collie always reads one checkpoint tensor at a time.

        With `low_cpu_mem_usage` (the default) the model is built on the meta device and each
        checkpoint tensor is copied into place as it is read: peak memory ≈ one model. Under
        a multi-process launch, with a CollieConfig, the model is returned empty (on the meta
        device): the Trainer splits and shards it first, then each rank copies in only its own
        shards of `model.source`, one checkpoint tensor at a time (no rank ever holds the
        whole model). So is a model whose CollieConfig asks for QLoRA (`quantization_config`):
        its frozen linears are put into 4 bits as they are read.
        """
        settings.pop("process_exclusion", None)
        if isinstance(config, str) or (config is None and settings):
            config, settings = CollieConfig.from_pretrained(config or path, **settings), {}
        return_freed_memory_to_os()  # reading frees a buffer per tensor: give the pages back
        # A hub id is read from the local HF cache, an object-store URL from a local copy.
        source = resolve_model_path(path)
        path = storage.local_copy(source)
        hf_config = _with_model_fields(load_hf_config(path), settings, config)
        dtype = dtype or param_dtype(config)
        if not spec_for(hf_config).supports_model_parallel:
            return _load_transformers_model(cls, path, hf_config, config, dtype)
        model_cls = _model_class(cls, hf_config, path)
        if config is not None and config.low_cpu_mem_usage and \
                (launched_processes() > 1 or quant_settings(config.quantization_config) is not None) and \
                not spec_for(hf_config).dims(hf_config).tied_embeddings:
            model = _on_meta(model_cls, hf_config, config, dtype)
            model.source = source
            return model
        if config is None or config.low_cpu_mem_usage:
            model = _materialize(model_cls, hf_config, config, dtype)
        else:
            model = model_cls(training_config(hf_config, config)).to(dtype)
            model.export_config = hf_config
        model.load_hf_weights(path)
        model.source = source
        return model

    def load_hf_weights(self, path: str, partial: bool = False,
                        take: Optional[Callable[[str, torch.Tensor], bool]] = None) -> None:
        """Copy an HF checkpoint's tensors into this model, whose parameters may be DTensor
        shards (each rank copies its own slice). A fused checkpoint tensor is split into our
        parameters by the family's adapter. `partial`: the model is one pipeline stage, so
        tensors of other stages are skipped. `take(name, tensor)` may keep a tensor itself,
        returning True, instead of its copy into place (QLoRA quantizes it as it is read)."""
        adapter = spec_for(self.config).adapter
        params = self.state_dict(keep_vars=True)
        missing = set(self.hf_state_names())
        unexpected = []
        with torch.no_grad():
            for hf_name, tensor in iter_hf_tensors(path):
                for name, piece in adapter.split(hf_name, tensor, self.config):
                    if name not in params:
                        if not partial:
                            unexpected.append(hf_name)
                        continue
                    target = params[name]
                    piece = checkpoint_rows_grown(self, name, piece, target.shape)
                    if tuple(target.shape) != tuple(piece.shape):
                        what = hf_name if piece is tensor else f"{hf_name} (its part {name})"
                        raise ValueError(f"{path}: {what} has shape {tuple(piece.shape)}, the model expects "
                                         f"{tuple(target.shape)} (does config.json match the weights?)")
                    if take is None or not take(name, piece):
                        copy_whole_into(target, piece.to(target.dtype))
                    missing.discard(name)
        if unexpected:
            raise ValueError(f"{path}: weights the model does not have: {', '.join(unexpected[:5])}")
        if missing:
            raise ValueError(f"{path}: weights missing from the checkpoint: {', '.join(sorted(missing)[:5])}")

    # -- saving -------------------------------------------------------------
    def hf_state_names(self) -> list[str]:
        """Our names of the tensors an HF checkpoint holds (a tied head is stored once)."""
        spec = spec_for(self.config)
        tied_head = f"{spec.edge_name('head')}.weight" if spec.dims(self.config).tied_embeddings else None
        return [name for name in self.state_dict() if name != tied_head and not is_adapter_name(name)]

    def save_pretrained(self, path: str, dtype: Optional[torch.dtype] = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, tokenizer=None) -> None:
        """Write config.json and safetensors weights that `transformers` loads as they are.

        Works from any parallel layout: each sharded tensor is gathered in turn (every rank
        must call this), and only rank 0 writes, one checkpoint tensor at a time.
        """
        if has_lora_adapters(self):
            raise ValueError("save_pretrained: the model has LoRA adapters, which an HF model directory cannot hold; "
                             "write them with Trainer.save_model (peft's format) or merge_adapters(model) first")
        state = self.state_dict()
        write_hf_model(path, self.export_config or self.config, spec_for(self.config), self.hf_state_names(),
                       lambda name: full_tensor(state[name]), dtype or next(self.parameters()).dtype,
                       is_writer=not dist.is_initialized() or dist.get_rank() == 0, tokenizer=tokenizer,
                       max_shard_bytes=max_shard_bytes)

    def tie_weights(self) -> None:
        spec = spec_for(self.config)
        head, embedding = spec.edge(self, "head"), spec.edge(self, "embedding")
        if spec.dims(self.config).tied_embeddings and head is not None:
            head.weight = embedding.weight

    def reset_parameters(self, init_method: str = "normal", seed: int = 0) -> None:
        raise NotImplementedError

    # -- CoLLiE's vocabulary methods -----------------------------------------
    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None) -> None:
        """Grow the embedding and head to `new_num_tokens` rows, each new row the mean of the old
        ones (`collie.models.vocabulary`); before the Trainer, on a loaded model or on the empty
        one `from_pretrained` returns under a multi-process launch."""
        if new_num_tokens is not None:
            resize_vocabulary(self, new_num_tokens)

    def get_input_embedding(self) -> tuple[Optional[str], Optional[nn.Module]]:
        """(attribute name, module) of the token embedding; (name, None) on a pipeline stage without it."""
        spec = spec_for(self.config)
        return spec.edge_name("embedding"), spec.edge(self, "embedding")

    def get_lm_head(self) -> tuple[Optional[str], Optional[nn.Module]]:
        """(attribute name, module) of the LM head; (name, None) on a pipeline stage without it."""
        spec = spec_for(self.config)
        return spec.edge_name("head"), spec.edge(self, "head")


# CoLLiE's name for the base class of its models.
CollieModelForCausalLM = CollieModel


def _with_model_fields(hf_config, fields: dict, collie_config):
    """`hf_config` with `fields` (keyword arguments given beside a CollieConfig) set on it; a
    field the CollieConfig has belongs there, not here."""
    for name, value in fields.items():
        if collie_config is not None and hasattr(collie_config, name):
            raise TypeError(f"from_pretrained: {name!r} is a CollieConfig setting; set it on the config you pass")
        setattr(hf_config, name, value)
    return hf_config


def family_config(hf_config):
    """`hf_config` as its family's config class: `CollieConfig.from_pretrained` keeps a family
    transformers does not ship as a plain PretrainedConfig (the config floor knows no families)."""
    model_type = getattr(hf_config, "model_type", None)
    fields = {**hf_config.to_dict(), "model_type": model_type} if hasattr(hf_config, "to_dict") else {}
    # All the fields: ChatGLM-6B and ChatGLM2/3 share a model_type, and their fields tell them apart.
    config_cls = config_class_for(fields or {"model_type": model_type})
    if config_cls is None or isinstance(hf_config, config_cls):
        return hf_config
    return config_cls(**fields)


def _model_class(cls: type, hf_config, path: Optional[str] = None) -> type:
    """The family's class for `hf_config`; called on a family class, it must be that family."""
    model_cls = spec_for(hf_config).model_cls
    if cls is not CollieModel and not issubclass(model_cls, cls):
        source = repr(path) if path else "the config"
        raise ValueError(f"{source} holds a {hf_config.model_type!r} model, not a {cls.__name__}")
    return model_cls


def _load_transformers_model(cls: type, path: str, hf_config, config, dtype: torch.dtype) -> nn.Module:
    """A model type collie has no family for, as transformers' own class (see collie.models.auto)."""
    if cls is not CollieModel:
        raise ValueError(f"{path!r} holds a {hf_config.model_type!r} model, not a {cls.__name__}")
    return load_auto(path, dtype)


def _on_meta(model_cls: type, hf_config, collie_config, dtype: torch.dtype) -> "CollieModel":
    """The model with no storage yet, parameters already in `dtype`."""
    with torch.device("meta"):
        model = model_cls(training_config(hf_config, collie_config))
    model.export_config = hf_config
    return model.to(dtype)


def _materialize(model_cls: type, hf_config, collie_config, dtype: torch.dtype) -> "CollieModel":
    """Uninitialised storage in `dtype` directly (cast while still on meta), so a bf16 7B
    model never passes through an fp32 copy."""
    model = _on_meta(model_cls, hf_config, collie_config, dtype)
    model.to_empty(device="cpu")
    model.tie_weights()
    return model


def param_dtype(config) -> torch.dtype:
    """The storage dtype a CollieConfig asks for; "auto" is fp32 (full-precision master weights)."""
    name = getattr(config, "param_dtype", "auto") if config is not None else "auto"
    return DTYPES.get(name, torch.float32)


def model_source(model: nn.Module) -> Optional[str]:
    """Where a model's weights came from: a collie model's `source`, transformers' `name_or_path`."""
    if isinstance(model, CollieModel):
        return model.source
    return getattr(model, "name_or_path", None) or None


def is_meta(model: nn.Module) -> bool:
    """Whether the model has no storage yet (built on the meta device, weights still to load)."""
    return any(p.is_meta for p in model.parameters())
