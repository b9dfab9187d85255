"""Read and write Hugging Face weight directories, one tensor at a time.

Nothing here holds more than one tensor (reading) or one shard (writing) in memory, which is
what lets a 7B export run on a machine that could not hold a second copy of the model.
"""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Iterable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from collie.dtypes import SAFETENSORS_DTYPES

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def weight_files(path: str) -> list[str]:
    """The weight files of an HF directory, safetensors preferred."""
    for index_name, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(path, name) for name in files]
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    raise FileNotFoundError(f"no model weights ({SAFE_SINGLE}, {SAFE_INDEX} or {BIN_SINGLE}) in {path!r}")


def iter_hf_tensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every weight in the directory, lazily; each tensor is a fresh
    copy the caller may keep or drop."""
    for file in weight_files(path):
        if file.endswith(".safetensors"):
            yield from iter_safetensors(file)
        else:
            # Only tensors, never pickled code: weights_only refuses anything else.
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def stored_dtype(path: str) -> torch.dtype:
    """The floating-point dtype an HF directory's weights are stored in."""
    for _, tensor in iter_hf_tensors(path):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def iter_safetensors(file: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a safetensors file, in file order, each read into its own memory.

    Plain reads rather than a memory map: a mapped file keeps every page it has touched
    resident in the process (and counted in its memory) until it is unmapped, so loading a
    model through a map costs the model twice. Here each tensor's bytes are read, and the
    page cache is told they are no longer needed: loading costs the model plus one tensor.
    """
    with open(file, "rb", buffering=0) as f:
        header_len = int.from_bytes(_read_exactly(f, 8), "little")
        header = json.loads(_read_exactly(f, header_len))
        start = 8 + header_len
        entries = sorted((item for item in header.items() if item[0] != "__metadata__"),
                         key=lambda item: item[1]["data_offsets"][0])
        for name, entry in entries:
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{file}: tensor {name} has dtype {entry['dtype']}, which collie cannot load")
            tensor = torch.empty(entry["shape"], dtype=SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = entry["data_offsets"]
            if end - begin != tensor.numel() * tensor.element_size():
                raise ValueError(f"{file}: tensor {name} holds {end - begin} bytes, its shape needs "
                                 f"{tensor.numel() * tensor.element_size()} (the file is corrupted)")
            f.seek(start + begin)
            _read_into(f, tensor.reshape(-1).view(torch.uint8).numpy(), file)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), start + begin, end - begin, os.POSIX_FADV_DONTNEED)
            yield name, tensor


def _read_exactly(f, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ValueError(f"{f.name}: truncated safetensors header")
    return data


def _read_into(f, buffer, file: str) -> None:
    view, done = memoryview(buffer).cast("B"), 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise ValueError(f"{file}: the file ends before its tensors do (truncated)")
        done += n


def write_safetensors(tensors: dict[str, torch.Tensor], file: str) -> None:
    """safetensors' save_file, whose I/O failures (a full disk) become the OSError they are:
    safetensors reports them as its own error with the OS's number in the message."""
    try:
        save_file(tensors, file, metadata={"format": "pt"})
    except SafetensorError as e:
        number = re.search(r"os error (\d+)", str(e))
        code = int(number.group(1)) if number else errno.EIO
        raise OSError(code, os.strerror(code), file) from e


def save_hf_tensors(path: str, named_tensors: Iterable[tuple[str, torch.Tensor]],
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write tensors as safetensors shards (with an index when there is more than one)."""
    os.makedirs(path, exist_ok=True)
    shards: list[dict[str, str]] = []
    current: dict[str, torch.Tensor] = {}
    current_bytes = 0
    total_bytes = 0

    def flush() -> None:
        nonlocal current, current_bytes
        if current:
            name = f".shard-{len(shards) + 1:05d}.tmp"
            write_safetensors(current, os.path.join(path, name))
            shards.append({key: name for key in current})
            current, current_bytes = {}, 0

    for name, tensor in named_tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        size = tensor.numel() * tensor.element_size()
        if current and current_bytes + size > max_shard_bytes:
            flush()
        current[name] = tensor
        current_bytes += size
        total_bytes += size
    flush()
    return _finalise_shards(path, shards, total_bytes)


def _finalise_shards(path: str, shards: list[dict[str, str]], total_bytes: int) -> list[str]:
    if len(shards) == 1:
        tmp = next(iter(shards[0].values()))
        os.replace(os.path.join(path, tmp), os.path.join(path, SAFE_SINGLE))
        return [SAFE_SINGLE]
    weight_map: dict[str, str] = {}
    names = []
    for i, shard in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(os.path.join(path, next(iter(shard.values()))), os.path.join(path, final))
        weight_map.update({key: final for key in shard})
        names.append(final)
    with open(os.path.join(path, SAFE_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
    return names
