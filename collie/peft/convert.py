"""`collie convert` for LoRA: a LoRA run's checkpoint → peft's adapter files, and any adapter
(peft directory or collie checkpoint) merged into its base → an ordinary HF model directory."""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from collie.config import ConfigError
from collie.config.peft_settings import PromptSettings
from collie.models import hf_io
from collie.models.base import CollieModel, load_hf_config, spec_for
from collie.peft.adapter_files import (
    Ranks,
    is_adapter_dir,
    load_adapter_tensors,
    lora_from_record,
    read_adapter,
    read_checkpoint_record,
    write_adapter,
)
from collie.peft.lora import add_lora, merge_adapters
from collie.peft.prompt_tuning import PROMPT_PARAM, attach_prompt, prompt_length, write_prompt
from collie.tokenization import copy_tokenizer_files


def checkpoint_to_adapter(checkpoint_dir: str, out_dir: str) -> None:
    """peft's files from a PEFT run's checkpoint (which holds the adapters or prompt only)."""
    record = read_checkpoint_record(checkpoint_dir)
    hf_config = load_hf_config(checkpoint_dir)
    spec = spec_for(hf_config)
    if record["type"] == "prompt_tuning":
        (prompt,) = _dcp_tensors(checkpoint_dir, [PROMPT_PARAM]).values()
        write_prompt(out_dir, prompt, PromptSettings(**record["settings"]), spec.dims(hf_config), record["base_model"])
        return
    settings, ranks = lora_from_record(record)
    write_adapter(out_dir, _checkpoint_tensors(checkpoint_dir, ranks), ranks, settings, hf_config, spec,
                  record["base_model"])


def merge_lora(source: str, out_dir: str, base: Optional[str] = None) -> None:
    """Fold the adapters of `source` (a peft adapter directory or a LoRA run's checkpoint) into
    their base model and write the result as an HF directory, in the base's dtype."""
    model, base = model_with_adapter(source, base, stored_dtype=True)
    if prompt_length(model):
        raise ConfigError(f"--merge-lora: {source!r} holds a trained prompt, not LoRA adapters: there is nothing to "
                          "merge into the weights")
    model.save_pretrained(out_dir)
    copy_tokenizer_files(source if os.path.isfile(os.path.join(source, "tokenizer_config.json")) else base, out_dir)


def model_with_adapter(source: str, base: Optional[str] = None,
                       stored_dtype: bool = False) -> tuple[CollieModel, str]:
    """The base model of `source` (a peft adapter directory or a PEFT run's checkpoint) with
    LoRA adapters folded in or the trained prompt attached (single process, the prompt put
    in front inside its forward), and the base's directory. The model is in fp32, or with
    `stored_dtype` in the base's own dtype (a LoRA update is computed in at least fp32 either
    way)."""
    record = read_checkpoint_record(source)
    if record is None and not is_adapter_dir(source):
        raise ConfigError(f"{source!r} is neither a peft adapter directory nor a checkpoint of a PEFT run")
    base = base or (record["base_model"] if record is not None else _peft_config(source).get("base_model_name_or_path"))
    if not base or not os.path.isfile(os.path.join(base, "config.json")):
        raise ConfigError(f"--base: the adapters' base model {base!r} is not an HF model directory here; "
                          "name it with --base DIR")
    model = CollieModel.from_pretrained(base, dtype=hf_io.stored_dtype(base) if stored_dtype else None)
    spec = spec_for(model.config)
    kind = record["type"] if record is not None else str(_peft_config(source).get("peft_type")).lower()
    if kind == "prompt_tuning":
        # The prompt is read below (a checkpoint) or from the adapter's files: no init text.
        settings = PromptSettings(**{**record["settings"], "init_text": None}) if record is not None else \
            PromptSettings(_peft_config(source)["num_virtual_tokens"], adapter=source)
        run = attach_prompt(model, spec, settings, config=None)
        run.start_from = (_dcp_tensors(source, [PROMPT_PARAM])[PROMPT_PARAM] if record is not None
                          else run.start_from)
        run.initialise(model, seed=0)
        return model, base
    if record is not None:
        settings, ranks = lora_from_record(record)
        tensors = _checkpoint_tensors(source, ranks)
    else:
        settings, ranks, tensors = read_adapter(source, model.config, spec)
    add_lora(model, spec, settings, ranks)
    load_adapter_tensors(model, tensors, source)
    merge_adapters(model)
    return model, base


def _checkpoint_tensors(path: str, ranks: Ranks) -> dict[str, torch.Tensor]:
    return _dcp_tensors(path, [f"{module}.{which}.weight" for module in ranks for which in ("lora_A", "lora_B")])


def _dcp_tensors(path: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Whole model tensors from a DCP checkpoint, by our names."""
    metadata = FileSystemReader(path).read_metadata().state_dict_metadata
    state = {}
    for name in names:
        meta = metadata.get(f"model.{name}")
        if meta is None:
            raise ConfigError(f"{path}: the checkpoint has no {name}")
        state[f"model.{name}"] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
    with warnings.catch_warnings():  # DCP warns that no process group exists: none is needed
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return {key[len("model."):]: tensor for key, tensor in state.items()}


def _peft_config(path: str) -> dict:
    with open(os.path.join(path, "adapter_config.json")) as f:
        return json.load(f)





