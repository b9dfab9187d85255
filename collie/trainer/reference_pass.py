"""The reference model's log-probabilities of every pair, computed once before training.

DPO, IPO and hinge compare the policy with the model it started from. Its summed
log-probabilities of each chosen and rejected sequence do not change during training, so one
pass of the initial model over the dataset replaces a second model in memory. The pass is
written to `output_dir/reference/<name>.json` with a fingerprint of the data and the model, and
read back instead of recomputed while both are unchanged — on a resumed run too, where the
weights in memory are no longer the initial ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable, ContextManager, Optional

import torch
import torch.distributed as dist

from collie import storage
from collie.preference import sequence_logps
from collie.tensors import whole

log = logging.getLogger("collie")

# Files of a model directory whose bytes are the weights (their size and time stand for them).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def reference_logps(model: torch.nn.Module, batch: dict, forward_context: Callable[[], ContextManager],
                    ignore_index: int) -> torch.Tensor:
    """Σ log p of each row's labelled tokens under `model` in eval mode (float64, no gradient)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forward_context():
            logits = whole(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits)
            return sequence_logps(logits, batch["labels"], ignore_index).summed.to(torch.float64)
    finally:
        model.train(was_training)


def model_fingerprint(source: Optional[str], dtypes: str) -> Optional[str]:
    """What identifies the initial weights: their directory and each weight file's name, size
    and modification time (None for a model that came from no directory)."""
    if not source:
        return None
    files = []
    if not storage.is_url(source) and os.path.isdir(source):
        for name in sorted(os.listdir(source)):
            if name.endswith(_WEIGHT_SUFFIXES):
                stat = os.stat(os.path.join(source, name))
                files.append([name, stat.st_size, stat.st_mtime_ns])
    return json.dumps({"model": os.path.abspath(source) if not storage.is_url(source) else source, "files": files,
                       "dtypes": dtypes})


def data_fingerprint(dataset) -> str:
    """sha256 of every pair's token ids and labels, in order."""
    digest = hashlib.sha256()
    for index in range(len(dataset)):
        item = dataset[index]
        for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
            digest.update(json.dumps(list(item[key])).encode())
    return digest.hexdigest()


def cache_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, "reference", f"{name}.json")


def read_cache(path: str, fingerprint: str, pairs: int) -> Optional[torch.Tensor]:
    """The cached [pairs, 2] (chosen, rejected) log-probabilities, or None when the file is
    missing, unreadable, or made from other data or another model."""
    if not storage.isfile(path):
        return None
    try:
        cached = json.loads(storage.read_text(path))
        values = torch.tensor(cached["logps"], dtype=torch.float64)
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; the reference log-probabilities are computed again", path)
        return None
    if cached.get("fingerprint") != fingerprint or tuple(values.shape) != (pairs, 2):
        log.info("%s: made from other data or another model; the reference log-probabilities are computed again",
                 path)
        return None
    return values


def write_cache(path: str, fingerprint: str, logps: torch.Tensor) -> None:
    # repr() of a Python float gives it back exactly: a resumed run sees the same bits.
    storage.makedirs(os.path.dirname(path))
    storage.write_text(path, json.dumps({"fingerprint": fingerprint, "logps": logps.tolist()}))


def compute(model: torch.nn.Module, dataset, collate: Callable[[list[dict]], dict], batch_size: int, runtime,
            forward_context: Callable[[], ContextManager], ignore_index: int) -> torch.Tensor:
    """[pairs, 2] reference log-probabilities of `dataset` under `model`: each data-parallel rank
    scores a strided share, every rank running as many batches (a sharded model gathers its
    parameters in every forward), and the shares are summed together."""
    rank, size = runtime.dp_rank, runtime.dp_size
    indices = list(range(rank, len(dataset), size))
    batches = -(-len(range(0, len(dataset), size)) // batch_size)  # rank 0's share is the longest
    values = torch.zeros(len(dataset), 2, dtype=torch.float64)
    for start in range(0, batches * batch_size, batch_size):
        chunk = indices[start:start + batch_size]
        batch = collate([dataset[i] for i in (chunk or [0])])  # a filler batch when this rank's share ended
        batch = {k: v.to(runtime.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logps = reference_logps(model, batch, forward_context, ignore_index).cpu()
        if chunk:
            values[chunk] = torch.stack(logps.chunk(2), dim=-1)
    if runtime.dp_group is not None:
        values = values.to(runtime.device)
        dist.all_reduce(values, group=runtime.dp_group)
    return values.cpu()


def fingerprint(dataset, base_model: Optional[str], config) -> Optional[str]:
    """What the reference log-probabilities of `dataset` depend on: the pairs' tokens, the initial
    weights, the dtypes they are computed in, and what a PEFT run starts from besides the weights
    (an adapter, a prompt). None when the weights came from no directory (nothing to check a
    cache against)."""
    model = model_fingerprint(base_model, f"{config.param_dtype}/{config.compute_dtype}/{config.mixed_precision}")
    if model is None:
        return None
    peft = json.dumps(dataclasses.asdict(config.peft), sort_keys=True, default=str)
    return hashlib.sha256(json.dumps([model, peft, data_fingerprint(dataset)]).encode()).hexdigest()


def cached_or_computed(name: str, dataset, config, base_model: Optional[str], compute: Callable[[], torch.Tensor],
                       is_main: bool, model: str = "initial") -> torch.Tensor:
    """[pairs, 2] reference log-probabilities of `dataset` from `output_dir/reference/<name>.json`
    when it was made from the same data and model, else `compute()`d (every rank) and written
    there (by the main rank)."""
    key = fingerprint(dataset, base_model, config)
    path = cache_path(config.output_dir, name) if config.output_dir else None
    logps = read_cache(path, key, len(dataset)) if path and key else None
    if logps is not None:
        if is_main:
            log.info("reference log-probabilities of the %s pairs: read from %s", name, path)
        return logps
    if is_main:
        log.info("reference log-probabilities of %d %s pairs: one pass of the %s model", len(dataset), name, model)
    logps = compute()
    if path and key and is_main:
        write_cache(path, key, logps)
    return logps
