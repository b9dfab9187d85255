"""`collie convert`: DCP training checkpoint ↔ Hugging Face directory, one tensor at a time.

DCP → HF reads each tensor from the checkpoint (gathering it whole whatever layout wrote
it) and streams it into safetensors shards. HF → DCP hands DCP placeholders (meta tensors)
and reads each real tensor from the safetensors file only when DCP writes it. Memory stays
at about one tensor (plus one output shard) either way.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Callable

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemReader

from collie.models.base import family_of, load_hf_config, save_hf_config
from collie.models.hf_io import save_hf_tensors, weight_files
from collie.trainer.checkpoint import TRAINER_STATE, CheckpointError, read_trainer_state

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt")


def dcp_to_hf(checkpoint_dir: str, out_dir: str) -> None:
    read_trainer_state(checkpoint_dir)
    hf_config = load_hf_config(checkpoint_dir)
    adapter = family_of(hf_config)[1]
    metadata = FileSystemReader(checkpoint_dir).read_metadata().state_dict_metadata
    tied = getattr(hf_config, "tie_word_embeddings", False)
    keys = [k for k in metadata if k.startswith("model.") and not (tied and k == "model.lm_head.weight")]
    if not keys:
        raise CheckpointError(f"{checkpoint_dir}: holds no model tensors")

    def tensors():
        for key in keys:
            meta = metadata[key]
            tensor = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
            with warnings.catch_warnings():  # DCP warns that no process group exists: none is needed
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load({key: tensor}, checkpoint_id=checkpoint_dir, no_dist=True)
            yield adapter.to_hf(key[len("model."):]), tensor

    save_hf_tensors(out_dir, tensors())
    save_hf_config(hf_config, out_dir, adapter, metadata[keys[0]].properties.dtype)
    _copy_tokenizer(checkpoint_dir, out_dir)


def hf_to_dcp(hf_dir: str, out_dir: str) -> None:
    """A model-only checkpoint: `resume_from` it for a sharded warm start on any layout."""
    hf_config = load_hf_config(hf_dir)
    adapter = family_of(hf_config)[1]
    placeholders: dict[str, torch.Tensor] = {}
    loaders: dict[str, Callable[[], torch.Tensor]] = {}
    for file in weight_files(hf_dir):
        if not file.endswith(".safetensors"):
            raise CheckpointError(f"{file}: only safetensors weights can be converted")
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():
                name = adapter.from_hf(hf_name)
                if name is None:
                    continue
                view = f.get_slice(hf_name)
                placeholders[name] = torch.empty(view.get_shape(), dtype=_DTYPES[view.get_dtype()], device="meta")
                loaders[f"model.{name}"] = _reader(file, hf_name)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dcp.save({"model": placeholders}, checkpoint_id=tmp, planner=_LazySavePlanner(loaders), no_dist=True)
    with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
        json.dump({"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "model_only": True}, f, indent=2)
    hf_config.save_pretrained(tmp)
    _copy_tokenizer(hf_dir, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class _LazySavePlanner(DefaultSavePlanner):
    """Plans from meta placeholders; reads each tensor from disk only when it is written."""

    def __init__(self, loaders: dict[str, Callable[[], torch.Tensor]]) -> None:
        super().__init__()
        self.loaders = loaders

    def resolve_data(self, write_item):
        return self.loaders[write_item.index.fqn]()


def _reader(file: str, name: str) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        with safe_open(file, framework="pt") as f:
            return f.get_tensor(name)
    return read


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32}


def _copy_tokenizer(src: str, dst: str) -> None:
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
