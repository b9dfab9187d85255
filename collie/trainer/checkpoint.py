"""Training checkpoints (DCP: sharded, loadable on another layout) and HF export.

A checkpoint is written to `<name>.tmp` and renamed when complete; the `latest` marker is
replaced last, so a crash mid-save leaves `latest` pointing at the previous checkpoint. In an
object store (`output_dir: s3://…`), which cannot rename, the checkpoint is written under its
own name and `latest` (one PUT, written last) is what makes it complete: a reader trusts only
the checkpoint `latest` names.
Each checkpoint also holds the model's `config.json` (and tokenizer), so `collie convert`
can turn it into an HF directory on its own.
"""

from __future__ import annotations

import json
import os
import pickle
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from collie import storage

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


@dataclass
class Checkpointed:
    """What a checkpoint holds, registered by its owner (the Trainer): the model, the optimizer
    through its step strategy, a `Stateful` object for everything else (JSON data), and the
    files that make a checkpoint self-describing (config.json, tokenizer, a PEFT record),
    written by `describe(directory)` on rank 0. The checkpointer touches nothing else."""
    model: torch.nn.Module
    optimizer: Any  # a StepStrategy: tensor_state / load_tensor_state / partial_load
    state: Any  # Stateful: state_dict() / load_state_dict(state)
    describe: Callable[[str], None]
    # A PEFT run keeps its trainable parameters alone: the frozen base is the model it started from.
    adapters_only: bool = False


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or of another model."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (a full disk, no permission): the partial one is removed and
    `latest` still names the previous complete one."""


def is_corruption(error: BaseException) -> bool:
    """Whether `error` is what reading a truncated, overwritten or half-written checkpoint
    raises. Running out of memory, a permission error or a storage timeout is not: those
    propagate as they are, since calling them "corrupted" would send the user the wrong way."""
    if isinstance(error, CheckpointException):  # DCP wraps each rank's failure
        return all(is_corruption(failure) for failure, _ in error.failures.values())
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return False
    if isinstance(error, OSError):
        return isinstance(error, FileNotFoundError)  # a file the checkpoint should hold is missing
    # What unpickling and reading a damaged file raise (torch's zip reader: RuntimeError). A
    # TypeError or AttributeError is a bug in the code that reads, never a property of the file.
    return isinstance(error, (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, RuntimeError))


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def latest(output_dir: Optional[str]) -> Optional[str]:
    """The checkpoint the `latest` marker names, if any."""
    if not output_dir:
        return None
    marker = os.path.join(checkpoints_dir(output_dir), LATEST)
    if not storage.isfile(marker):
        return None
    name = storage.read_text(marker).strip()
    path = os.path.join(checkpoints_dir(output_dir), name)
    if not storage.isdir(path):
        raise CheckpointError(f"{marker} names {name!r}, which does not exist")
    return path


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _no_dist() -> bool:
    """Whether DCP runs in this process alone; if so, its warning that it does is silenced."""
    if dist.is_initialized():
        return False
    quiet_single_process_warning()
    return True


def quiet_single_process_warning() -> None:
    """DCP warns "torch.distributed is disabled …" at every save and load without a process
    group, even when told so with `no_dist=True`: a one-process run needs none. The filter is
    global (not `catch_warnings`) because a background checkpoint warns from DCP's own thread;
    it matches that message from DCP alone."""
    warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                            category=UserWarning, module="torch.distributed.checkpoint")


def _model_options(adapters_only: bool) -> Optional[StateDictOptions]:
    """A PEFT run checkpoints its adapters alone: the frozen base is the model it started from."""
    return StateDictOptions(ignore_frozen_params=True, strict=False) if adapters_only else None


def _states(saved: Checkpointed, model_only: bool, loading: bool = False) -> dict:
    """The tensors DCP writes: the model's, and the optimizer's as its step strategy keys them."""
    state = {"model": get_model_state_dict(saved.model, options=_model_options(saved.adapters_only))}
    if not model_only:
        state.update(saved.optimizer.tensor_state(loading))
    return state


def save(saved: Checkpointed, path: str, max_to_keep: int = 0, model_only: bool = False,
         mark_latest: bool = True, background=None) -> str:
    """Write a checkpoint (every rank calls this); returns its path. With `background` (a
    `BackgroundWriter`) only the state is staged here and the tensors are written in the
    background; the checkpoint gets its name and `latest` once that write has completed."""
    path = _destination(path, mark_latest)
    tmp = staging_name(path)
    rank = _rank()
    if background is not None:
        background.wait()  # one checkpoint in flight at a time
    if rank == 0:
        storage.remove_tree(tmp)  # left by a save that was killed
    _barrier()
    failure = _storage_failure(lambda: _write_files(saved, tmp, rank, model_only))
    if failure is None and background is None:
        failure = _storage_failure(lambda: dcp.save(_states(saved, model_only), checkpoint_id=tmp,
                                                    no_dist=_no_dist()))
    # Every rank learns whether any rank failed: they all stop (or go on) together.
    if _any_rank(failure is not None):
        if rank == 0:
            storage.remove_tree(tmp)
        _barrier()
        raise write_error(path, failure)
    if background is not None:
        background.start(_states(saved, model_only), tmp, path, mark_latest, max_to_keep)
        return path
    _barrier()
    if rank == 0:
        finalize(tmp, path, mark_latest, max_to_keep)
    _barrier()
    return path


def _destination(path: str, mark_latest: bool) -> str:
    """Where the checkpoint goes: `path`, except that an object store (no rename, so a checkpoint
    is written in place) never overwrites a complete one — the one `latest` names, or for a
    checkpoint `latest` does not track, whatever is there — and a fresh name is used instead.
    Rank 0 decides; every rank gets its answer."""
    if not storage.is_url(path):
        return path
    choice = [path]
    if _rank() == 0 and storage.exists(path):
        marker = os.path.join(os.path.dirname(path), LATEST)
        named = storage.read_text(marker).strip() if storage.isfile(marker) else None
        if not mark_latest or named == os.path.basename(path):
            choice = [f"{path}-{uuid.uuid4().hex[:8]}"]
    if dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def staging_name(path: str) -> str:
    """Where a checkpoint is written until it is complete: `<name>.tmp` on a file system (then
    renamed), its own name in an object store (`latest` marks it complete)."""
    return path if storage.is_url(path) else path + ".tmp"


def finalize(tmp: str, path: str, mark_latest: bool, max_to_keep: int) -> None:
    """Give a complete checkpoint its name, then (last) point `latest` at it (rank 0)."""
    if tmp != path:
        storage.remove_tree(path)
        os.replace(tmp, path)
    if mark_latest:
        _write_marker(os.path.dirname(path), os.path.basename(path))
        _prune(os.path.dirname(path), max_to_keep)


def write_error(path: str, failure: Optional[BaseException]) -> CheckpointWriteError:
    cause = _storage_cause(failure) if failure is not None else "failed on another rank"
    return CheckpointWriteError(f"{path}: the checkpoint could not be written ({cause}); the partial one was "
                                "removed and `latest` still names the previous checkpoint")


def _storage_failure(write) -> Optional[BaseException]:
    """Run `write`; return the file-system error it raised (others propagate)."""
    try:
        write()
    except (OSError, RuntimeError, CheckpointException) as e:
        if not is_storage_error(e):
            raise
        return e
    return None


def _write_files(saved: Checkpointed, tmp: str, rank: int, model_only: bool) -> None:
    """Everything but the tensors: RNG state per rank; the state, config, tokenizer (rank 0)."""
    storage.makedirs(tmp)
    # Every rank adds its own files (rank 0 cleared the directory before the barrier).
    with storage.staged(tmp, last=(), replace=False) as local:
        if not model_only:
            # Through a Python file: a failed write then carries its OSError (ENOSPC), which
            # torch's own file writer would reduce to "iostream error".
            with open(os.path.join(local, f"rank-{rank}.pt"), "wb") as f:
                torch.save({"rng": rng_state()}, f)
        if rank == 0:
            with open(os.path.join(local, TRAINER_STATE), "w") as f:
                json.dump(trainer_state(saved.state, model_only), f, indent=2)
            saved.describe(local)


def is_storage_error(error: BaseException) -> bool:
    """An OSError from the file system (DCP wraps each rank's in a CheckpointException)."""
    return os_error(error) is not None


def os_error(error: BaseException) -> Optional[OSError]:
    """The file system's error behind a failed write, if that is what failed: the error itself,
    each rank's failure inside DCP's CheckpointException, or the OSError that torch's zip writer
    turned into a RuntimeError ("unexpected pos …") when a write to its file failed."""
    if isinstance(error, CheckpointException):
        found = [os_error(failure) for failure, _ in error.failures.values()]
        return found[0] if found and all(found) else None
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


def _storage_cause(error: BaseException) -> str:
    """The OS's words for what failed, and the checkpoint's file when the OS named it."""
    cause = os_error(error)
    if cause is None:
        return str(error)
    text = cause.strerror or str(cause)
    return f"{text}: {os.path.basename(os.fspath(cause.filename))}" if cause.filename else text


def _any_rank(flag: bool) -> bool:
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def load(saved_objects: Checkpointed, path: str) -> None:
    """Restore a checkpoint; it may come from another parallel layout (DCP reshards).

    A model-only checkpoint restores the weights alone: training starts from step 0 with a
    fresh optimizer (a warm start).
    """
    saved = read_trainer_state(path)
    if saved.get("model_only"):
        load_model_only(saved_objects.model, path, adapters_only=saved_objects.adapters_only)
        return
    strategy = saved_objects.optimizer
    state = _states(saved_objects, model_only=False, loading=True)
    _check_compatible(path, state)
    _dcp_load(path, state, partial=strategy.partial_load)
    set_model_state_dict(saved_objects.model, state["model"], options=_model_options(saved_objects.adapters_only))
    strategy.load_tensor_state(state, saved.get("optimizer", {}))
    saved_objects.state.load_state_dict(saved)
    own = os.path.join(path, f"rank-{_rank()}.pt")
    if storage.isfile(own):
        try:
            with storage.open_file(own) as f:
                per_rank = torch.load(f, weights_only=True)
        except Exception as e:
            if not is_corruption(e):
                raise
            raise CheckpointError(f"{own}: unreadable ({type(e).__name__}); the checkpoint is corrupted") from e
        set_rng_state(per_rank["rng"])


def load_model_only(model: torch.nn.Module, path: str, adapters_only: bool = False) -> None:
    """The weights of a checkpoint (any layout) into `model` (its adapters alone for a PEFT run)."""
    options = _model_options(adapters_only)
    state = {"model": get_model_state_dict(model, options=options)}
    _check_compatible(path, state)
    _dcp_load(path, state)
    set_model_state_dict(model, state["model"], options=options)


def read_trainer_state(path: str) -> dict:
    state_file = os.path.join(path, TRAINER_STATE)
    if not storage.isfile(state_file):
        raise CheckpointError(f"{path}: not a collie checkpoint (no {TRAINER_STATE})")
    try:
        return json.loads(storage.read_text(state_file))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both are
        raise CheckpointError(f"{state_file}: unreadable ({e}); the checkpoint is corrupted") from e


def _check_compatible(path: str, state: dict) -> None:
    """Name the first tensor the checkpoint lacks or holds in another shape, instead of
    DCP's deep error, when resuming with a different model."""
    try:
        metadata = reader(path).read_metadata().state_dict_metadata
    except Exception as e:
        if not is_corruption(e):
            raise
        raise CheckpointError(f"{path}: cannot read the checkpoint metadata ({type(e).__name__}); "
                              "the checkpoint is incomplete or corrupted") from e
    for name, tensor in state["model"].items():
        saved = metadata.get(f"model.{name}")
        if saved is None:
            raise CheckpointError(f"{path}: has no tensor {name!r}; it is a checkpoint of another model")
        if tuple(saved.size) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: {name} has shape {tuple(saved.size)}, the model has "
                                  f"{tuple(tensor.shape)}; it is a checkpoint of another model shape")


def reader(path: str):
    """DCP's reader for a checkpoint directory or URL."""
    if storage.is_url(path):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(path)
    return FileSystemReader(path)


def _dcp_load(path: str, state: dict, partial: bool = False) -> None:
    planner = DefaultLoadPlanner(allow_partial_load=partial)
    try:
        dcp.load(state, checkpoint_id=path, planner=planner, no_dist=_no_dist())
    except (Exception, CheckpointException) as e:  # DCP's own error is a BaseException
        # DCP wraps what failed on each rank: show the first cause itself.
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) else e
        if not is_corruption(e):
            raise cause from e
        first_line = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ""
        raise CheckpointError(f"{path}: cannot load the checkpoint ({type(cause).__name__}: {first_line}); "
                              "the checkpoint is incomplete or corrupted") from e


def trainer_state(stateful, model_only: bool = False) -> dict:
    """trainer_state.json: the registered state (a model-only checkpoint keeps its position)."""
    state = stateful.state_dict()
    if model_only:
        state = {key: state[key] for key in ("global_step", "epoch", "batch_in_epoch")}
    return {**state, "model_only": model_only}


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
    storage.write_text(os.path.join(root, LATEST), name + "\n")


def _prune(root: str, max_to_keep: int) -> None:
    if max_to_keep <= 0:
        return
    steps = sorted((int(n.split("-")[1]), n) for n in storage.listdir(root)
                   if n.startswith("step-") and not n.endswith(".tmp"))
    for _, name in steps[:-max_to_keep]:
        storage.remove_tree(os.path.join(root, name))
