"""`collie convert`: DCP training checkpoint ↔ Hugging Face directory, one tensor at a time.

DCP → HF reads each tensor from the checkpoint (gathering it whole whatever layout wrote
it) and streams it into safetensors shards. HF → DCP hands DCP placeholders (meta tensors)
and reads each real tensor from the safetensors file only when DCP writes it. Memory stays
at about one tensor (plus one output shard) either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import warnings
from typing import Callable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from collie.dtypes import SAFETENSORS_DTYPES
from collie.models.base import load_hf_config, spec_for
from collie.models.hf_io import weight_files
from collie.models.hf_writer import write_hf_model
from collie.peft.adapter_files import read_checkpoint_record
from collie.peft.convert import checkpoint_to_adapter
from collie.tokenization import copy_tokenizer_files
from collie.trainer.checkpoint import TRAINER_STATE, CheckpointError, is_corruption, read_trainer_state


@contextlib.contextmanager
def _damage_named(checkpoint_dir: str) -> Iterator[None]:
    """What reading a truncated or corrupted DCP file raises, as one line naming the checkpoint."""
    try:
        yield
    except (CheckpointException, EOFError, pickle.UnpicklingError) as e:  # DCP's own error is a BaseException
        if not is_corruption(e):
            raise
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) else e
        detail = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
        raise CheckpointError(f"{checkpoint_dir}: the checkpoint is damaged ({type(cause).__name__}"
                              f"{': ' + detail if detail else ''}); a file in it is truncated or corrupted") from None


def dcp_to_hf(checkpoint_dir: str, out_dir: str) -> None:
    """An HF model directory; for a LoRA run's checkpoint, peft's adapter files."""
    read_trainer_state(checkpoint_dir)
    if read_checkpoint_record(checkpoint_dir) is not None:
        with _damage_named(checkpoint_dir):
            checkpoint_to_adapter(checkpoint_dir, out_dir)
        copy_tokenizer_files(checkpoint_dir, out_dir)
        return
    hf_config = load_hf_config(checkpoint_dir)
    spec = spec_for(hf_config)
    with _damage_named(checkpoint_dir):
        metadata = FileSystemReader(checkpoint_dir).read_metadata().state_dict_metadata
    tied_head = f"{spec.edge_name('head')}.weight" if spec.dims(hf_config).tied_embeddings else None
    names = [k[len("model."):] for k in metadata if k.startswith("model.") and k != f"model.{tied_head}"]
    if not names:
        raise CheckpointError(f"{checkpoint_dir}: holds no model tensors")

    def fetch(name: str) -> torch.Tensor:
        meta = metadata[f"model.{name}"]
        tensor = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        with warnings.catch_warnings(), _damage_named(checkpoint_dir):  # no process group exists: none is needed
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({f"model.{name}": tensor}, checkpoint_id=checkpoint_dir, no_dist=True)
        return tensor

    write_hf_model(out_dir, hf_config, spec, names, fetch, metadata[f"model.{names[0]}"].properties.dtype)
    copy_tokenizer_files(checkpoint_dir, out_dir)


def hf_to_dcp(hf_dir: str, out_dir: str) -> None:
    """A model-only checkpoint: `resume_from` it for a sharded warm start on any layout."""
    hf_config = load_hf_config(hf_dir)
    adapter = spec_for(hf_config).adapter
    placeholders: dict[str, torch.Tensor] = {}
    loaders: dict[str, Callable[[], torch.Tensor]] = {}
    for file in weight_files(hf_dir):
        if not file.endswith(".safetensors"):
            raise CheckpointError(f"{file}: only safetensors weights can be converted")
        with safe_open(file, framework="pt") as f:
            for hf_name in f.keys():
                view = f.get_slice(hf_name)
                dtype = SAFETENSORS_DTYPES[view.get_dtype()]
                # Split a meta tensor: our names and shapes without reading any data.
                meta = torch.empty(view.get_shape(), dtype=dtype, device="meta")
                for name, part in adapter.split(hf_name, meta, hf_config):
                    placeholders[name] = part
                    loaders[f"model.{name}"] = _reader(file, hf_name, name, adapter, hf_config)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dcp.save({"model": placeholders}, checkpoint_id=tmp, planner=_LazySavePlanner(loaders), no_dist=True)
        with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
            json.dump({"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "model_only": True}, f, indent=2)
        hf_config.save_pretrained(tmp)
        copy_tokenizer_files(hf_dir, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no partial checkpoint left beside the destination
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


class _LazySavePlanner(DefaultSavePlanner):
    """Plans from meta placeholders; reads each tensor from disk only when it is written."""

    def __init__(self, loaders: dict[str, Callable[[], torch.Tensor]]) -> None:
        super().__init__()
        self.loaders = loaders

    def resolve_data(self, write_item):
        return self.loaders[write_item.index.fqn]()


def _reader(file: str, hf_name: str, name: str, adapter, hf_config) -> Callable[[], torch.Tensor]:
    def read() -> torch.Tensor:
        with safe_open(file, framework="pt") as f:
            parts = dict(adapter.split(hf_name, f.get_tensor(hf_name), hf_config))
        return parts[name].contiguous()
    return read
