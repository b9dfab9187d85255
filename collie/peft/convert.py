"""`collie convert` for LoRA: a LoRA run's checkpoint → peft's adapter files, and any adapter
(peft directory or collie checkpoint) merged into its base → an ordinary HF model directory."""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from collie.config import ConfigError
from collie.models.base import CollieModel, load_hf_config, spec_for
from collie.models.hf_io import iter_hf_tensors
from collie.peft.adapter_files import (Ranks, is_adapter_dir, load_adapter_tensors, read_adapter,
                                       read_checkpoint_record, write_adapter)
from collie.peft.lora import add_lora, merge_adapters


def checkpoint_to_adapter(checkpoint_dir: str, out_dir: str) -> None:
    """peft's files from a LoRA run's checkpoint (which holds the adapters only)."""
    settings, ranks, base = read_checkpoint_record(checkpoint_dir)
    hf_config = load_hf_config(checkpoint_dir)
    write_adapter(out_dir, _checkpoint_tensors(checkpoint_dir, ranks), ranks, settings, hf_config,
                  spec_for(hf_config), base)


def merge_lora(source: str, out_dir: str, base: Optional[str] = None) -> None:
    """Fold the adapters of `source` (a peft adapter directory or a LoRA run's checkpoint) into
    their base model and write the result as an HF directory, in the base's dtype."""
    model, base = merged_model(source, base, stored_dtype=True)
    model.save_pretrained(out_dir)
    from collie.convert import copy_tokenizer

    copy_tokenizer(source if os.path.isfile(os.path.join(source, "tokenizer_config.json")) else base, out_dir)


def merged_model(source: str, base: Optional[str] = None, stored_dtype: bool = False) -> tuple[CollieModel, str]:
    """The base model of `source`'s adapters with them folded in (single process), and the
    base's directory. The model is in fp32, or with `stored_dtype` in the base's own dtype
    (the update is computed in at least fp32 either way)."""
    record = read_checkpoint_record(source)
    if record is None and not is_adapter_dir(source):
        raise ConfigError(f"--merge-lora: {source!r} is neither a peft adapter directory nor a checkpoint of a "
                          "LoRA run")
    base = base or (record[2] if record is not None else _peft_base(source))
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        raise ConfigError(f"--base: the adapters' base model {base!r} is not an HF model directory here; "
                          "name it with --base DIR")
    model = CollieModel.from_pretrained(base, dtype=_stored_dtype(base) if stored_dtype else None)
    spec = spec_for(model.config)
    if record is not None:
        settings, ranks, _ = record
        tensors = _checkpoint_tensors(source, ranks)
    else:
        settings, ranks, tensors = read_adapter(source, model.config, spec)
    add_lora(model, spec, settings, ranks)
    load_adapter_tensors(model, tensors, source)
    merge_adapters(model)
    return model, base


def _checkpoint_tensors(path: str, ranks: Ranks) -> dict[str, torch.Tensor]:
    metadata = FileSystemReader(path).read_metadata().state_dict_metadata
    state = {}
    for module in ranks:
        for which in ("lora_A", "lora_B"):
            key = f"model.{module}.{which}.weight"
            if key not in metadata:
                raise ConfigError(f"{path}: the checkpoint has no {key[len('model.'):]}")
            meta = metadata[key]
            state[key] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    with warnings.catch_warnings():  # DCP warns that no process group exists: none is needed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return {key[len("model."):]: tensor for key, tensor in state.items()}


def _peft_base(path: str) -> Optional[str]:
    from peft import LoraConfig

    return LoraConfig.from_pretrained(path).base_model_name_or_path


def _stored_dtype(path: str) -> torch.dtype:
    for _, tensor in iter_hf_tensors(path):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32
