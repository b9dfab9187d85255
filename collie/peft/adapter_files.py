"""LoRA adapters in peft's own format: `adapter_config.json` + `adapter_model.safetensors`,
which `peft.PeftModel.from_pretrained(base, dir)` loads, and which collie reads back.

Tensors are named after the checkpoint's modules (`base_model.model.<hf module>.lora_A.weight`).
Where the checkpoint fuses several of our layers into one matrix (InternLM2's `wqkv`,
ChatGLM's `query_key_value`), their adapters are written as one adapter of the fused matrix
whose rank is the sum of theirs: A stacks their A's and B places each B in its rows and its
own block of columns (zeros elsewhere), so the update is exactly the same. Reading splits a
fused adapter's B by rows; each part keeps the whole A.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from collie import storage
from collie.config import ConfigError
from collie.config.peft_settings import LoraSettings, from_peft_config
from collie.peft.lora import adapter_modules, hf_module_names
from collie.tensors import copy_whole_into, full_tensor

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# What a checkpoint of a PEFT run records about its adapters (`collie convert` reads it).
CHECKPOINT_RECORD = "adapters.json"
_PREFIX = "base_model.model."

# Our module name -> (rank, alpha).
Ranks = dict[str, tuple[int, float]]


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


def base_model_record(base_model: Optional[str]) -> Optional[str]:
    """The base model as adapters record it: a local directory by its absolute path (a relative
    one names another directory wherever the adapters are read from); a URL or hub id as given."""
    if base_model is None or storage.is_url(base_model) or not os.path.exists(storage.local_form(base_model)):
        return base_model
    return os.path.abspath(storage.local_form(base_model))


def gather_adapters(module: torch.nn.Module, runtime) -> dict[str, torch.Tensor]:
    """Every adapter tensor, whole, on global rank 0 (an empty dict elsewhere). Every rank
    calls this: sharded adapters are gathered within their stage, stages send theirs to rank 0."""
    local = {}
    for name, layer in adapter_modules(module).items():
        local[f"{name}.lora_A.weight"] = full_tensor(layer.lora_A.weight)
        local[f"{name}.lora_B.weight"] = full_tensor(layer.lora_B.weight)
    if runtime.pp_size > 1:
        stages: list = [None] * runtime.pp_size
        dist.all_gather_object(stages, local, group=runtime.pp_group)
        local = {name: tensor for stage in stages for name, tensor in stage.items()}
    return local if runtime.env.rank == 0 else {}


def write_adapter(path: str, tensors: dict[str, torch.Tensor], ranks: Ranks, settings: LoraSettings, hf_config,
                  spec, base_model: Optional[str]) -> None:
    """Write peft's files from our adapter tensors (whole, on this process)."""
    skeleton = _skeleton(spec, hf_config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    hf_of = hf_module_names(skeleton, spec)
    out: dict[str, torch.Tensor] = {}
    rank_pattern, alpha_pattern = {}, {}
    for hf_module, parts in _fused_groups(hf_of).items():
        adapted = [p for p in parts if p in ranks]
        if not adapted:
            continue
        scaling = settings.scaling(*ranks[adapted[0]])
        total = sum(ranks[p][0] for p in adapted)
        a_blocks, b_parts, offset = [], [], 0
        for part in parts:
            b = torch.zeros(shapes[f"{part}.weight"][0], total, dtype=tensors[f"{adapted[0]}.lora_B.weight"].dtype)
            if part in ranks:
                rank, alpha = ranks[part]
                a_blocks.append(tensors[f"{part}.lora_A.weight"])
                # Fused adapters share one scaling: fold each part's own into its B block.
                b[:, offset:offset + rank] = tensors[f"{part}.lora_B.weight"] * (settings.scaling(rank, alpha) / scaling)
                offset += rank
            b_parts.append(b)
        b = b_parts[0] if len(parts) == 1 else spec.adapter.fuse(f"{hf_module}.weight", b_parts, hf_config)
        out[f"{_PREFIX}{hf_module}.lora_A.weight"] = torch.cat(a_blocks).contiguous()
        out[f"{_PREFIX}{hf_module}.lora_B.weight"] = b.contiguous()
        alpha = scaling * (total ** 0.5 if settings.rslora else total)
        if total != settings.r:
            rank_pattern[hf_module] = total
        if alpha != settings.alpha:
            alpha_pattern[hf_module] = alpha
    os.makedirs(path, exist_ok=True)
    save_file(out, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
    written = sorted({name[len(_PREFIX):-len(".lora_A.weight")] for name in out if name.endswith("lora_A.weight")})
    peft_config = settings.to_peft(_target_names(written, set(hf_of.values())), base_model_record(base_model),
                                   rank_pattern, alpha_pattern)
    peft_config.save_pretrained(path)


def read_adapter(path: str, hf_config, spec) -> tuple[LoraSettings, Ranks, dict[str, torch.Tensor]]:
    """A peft adapter directory as our settings, per-module (rank, alpha) and tensors."""
    from peft import LoraConfig

    try:
        peft_config = LoraConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"peft.adapter: {path!r} holds no readable LoRA adapter_config.json ({e})") from None
    settings = from_peft_config(peft_config, adapter=path)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ConfigError(f"peft.adapter: no {WEIGHTS_FILE} in {path!r}")
    stored = load_file(weights)
    ranks: Ranks = {}
    tensors: dict[str, torch.Tensor] = {}
    for key, a in stored.items():
        if not key.endswith(".lora_A.weight"):
            continue
        hf_module = key[len(_PREFIX):-len(".lora_A.weight")] if key.startswith(_PREFIX) else key
        b = stored.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise ConfigError(f"peft.adapter: {weights} has {key} but no lora_B to go with it")
        rank = a.shape[0]
        _, alpha = settings.rank_and_alpha(hf_module)
        for our_weight, b_part in spec.adapter.split(f"{hf_module}.weight", b, hf_config):
            module = our_weight[:-len(".weight")]
            ranks[module] = (rank, alpha)
            tensors[f"{module}.lora_A.weight"] = a
            tensors[f"{module}.lora_B.weight"] = b_part.contiguous()
    if not ranks:
        raise ConfigError(f"peft.adapter: {weights} holds no LoRA tensors")
    return settings, ranks, tensors


def load_adapter_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy whole adapter tensors into this rank's (possibly sharded) adapters."""
    for name, layer in adapter_modules(module).items():
        for which in ("lora_A", "lora_B"):
            key = f"{name}.{which}.weight"
            target = getattr(layer, which).weight
            if key not in tensors:
                raise ConfigError(f"peft.adapter: {source} has no {key}")
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise ConfigError(f"peft.adapter: {source}: {key} has shape {tuple(tensors[key].shape)}, "
                                  f"the model expects {tuple(target.shape)}")
            copy_whole_into(target, tensors[key].to(target.dtype))


def write_checkpoint_record(path: str, record: dict) -> None:
    record = {**record, "base_model": base_model_record(record.get("base_model"))}
    with open(os.path.join(path, CHECKPOINT_RECORD), "w") as f:
        json.dump(record, f, indent=2)


def read_checkpoint_record(path: str) -> Optional[dict]:
    """What a PEFT run's checkpoint records (`type`, `settings`, `base_model`, LoRA's `ranks`);
    None for a full-model checkpoint."""
    file = os.path.join(path, CHECKPOINT_RECORD)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return json.load(f)


def lora_from_record(record: dict) -> tuple[LoraSettings, Ranks]:
    settings = dict(record["settings"])
    if isinstance(settings["target_modules"], list):
        settings["target_modules"] = tuple(settings["target_modules"])
    ranks = {k: (int(v[0]), float(v[1])) for k, v in record["ranks"].items()}
    return LoraSettings(**settings), ranks


def _skeleton(spec, hf_config) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.model_cls(hf_config)


def _fused_groups(hf_of: dict[str, str]) -> dict[str, list[str]]:
    """Checkpoint module -> our modules stored in it, in the checkpoint's order."""
    groups: dict[str, list[str]] = {}
    for ours, hf in hf_of.items():
        groups.setdefault(hf, []).append(ours)
    return groups


def _target_names(written: list[str], all_linear: set[str]) -> list[str]:
    """peft's `target_modules`: the short names (q_proj) when they pick exactly the adapted
    modules, otherwise the full module names."""
    short = {name.rsplit(".", 1)[-1] for name in written}
    if {name for name in all_linear if name.rsplit(".", 1)[-1] in short} == set(written):
        return sorted(short)
    return written
