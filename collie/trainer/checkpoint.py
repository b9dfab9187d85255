"""Training checkpoints (DCP: sharded, loadable on another layout) and HF export.

A checkpoint is written to `<name>.tmp` and renamed when complete; the `latest` marker is
replaced last, so a crash mid-save leaves `latest` pointing at the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def latest(output_dir: Optional[str]) -> Optional[str]:
    """The checkpoint the `latest` marker names, if any."""
    if not output_dir:
        return None
    marker = os.path.join(checkpoints_dir(output_dir), LATEST)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        name = f.read().strip()
    path = os.path.join(checkpoints_dir(output_dir), name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{marker} names {name!r}, which does not exist")
    return path


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _states(trainer) -> dict:
    state = {"model": get_model_state_dict(trainer.model)}
    if not trainer.updates_in_backward:
        state["optim"] = get_optimizer_state_dict(trainer.model, trainer.optimizer)
    return state


def save(trainer, path: Optional[str] = None) -> str:
    if path is None:
        if not trainer.config.output_dir:
            raise ValueError("output_dir: set it (or pass a path) to save checkpoints")
        path = os.path.join(checkpoints_dir(trainer.config.output_dir), f"step-{trainer.global_step}")
    tmp = path + ".tmp"
    if _rank() == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    _barrier()
    dcp.save(_states(trainer), checkpoint_id=tmp)
    rank = _rank()
    per_rank = {"rng": rng_state()}
    if trainer.updates_in_backward:
        # In-backward optimizers keep per-parameter state on each rank's own shards.
        per_rank["optimizer"] = trainer.optimizer.state_dict()
    torch.save(per_rank, os.path.join(tmp, f"rank-{rank}.pt"))
    if rank == 0:
        with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
            json.dump(trainer_state(trainer), f, indent=2)
    _barrier()
    if rank == 0:
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        _write_marker(os.path.dirname(path), os.path.basename(path))
        _prune(os.path.dirname(path), trainer.config.max_to_keep)
    _barrier()
    return path


def load(trainer, path: str) -> None:
    if not os.path.isfile(os.path.join(path, TRAINER_STATE)):
        raise FileNotFoundError(f"{path}: not a collie checkpoint (no {TRAINER_STATE})")
    state = _states(trainer)
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(trainer.model, state["model"])
    if "optim" in state:
        set_optimizer_state_dict(trainer.model, trainer.optimizer, state["optim"])
    with open(os.path.join(path, TRAINER_STATE)) as f:
        saved = json.load(f)
    trainer.global_step, trainer.epoch = saved["global_step"], saved["epoch"]
    trainer.batch_in_epoch = saved["batch_in_epoch"]
    trainer.lr_scheduler.load_state_dict(saved["lr_scheduler"])
    for callback, callback_state in zip(trainer.callbacks.callbacks, saved.get("callbacks", [])):
        callback.load_state_dict(callback_state)
    own = os.path.join(path, f"rank-{_rank()}.pt")
    if os.path.isfile(own):
        per_rank = torch.load(own, weights_only=True)
        set_rng_state(per_rank["rng"])
        if "optimizer" in per_rank:
            trainer.optimizer.load_state_dict(per_rank["optimizer"])


def trainer_state(trainer) -> dict:
    return {"global_step": trainer.global_step, "epoch": trainer.epoch, "batch_in_epoch": trainer.batch_in_epoch,
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "callbacks": [c.state_dict() for c in trainer.callbacks.callbacks]}


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_marker(root: str, name: str) -> None:
    tmp = os.path.join(root, LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
    os.replace(tmp, os.path.join(root, LATEST))


def _prune(root: str, max_to_keep: int) -> None:
    if max_to_keep <= 0:
        return
    steps = sorted((int(n.split("-")[1]), n) for n in os.listdir(root)
                   if n.startswith("step-") and not n.endswith(".tmp"))
    for _, name in steps[:-max_to_keep]:
        shutil.rmtree(os.path.join(root, name))


def export_hf(model: torch.nn.Module, path: str, runtime, tokenizer=None) -> None:
    """HF-format model (+ tokenizer) from any layout; see `CollieModel.save_pretrained`."""
    model.save_pretrained(path)
    if runtime.is_main and tokenizer is not None:
        tokenizer.save_pretrained(path)
    runtime.barrier()
