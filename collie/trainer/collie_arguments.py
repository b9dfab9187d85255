"""The Trainer's arguments as CoLLiE's scripts give them, made into what the loop runs: a
`train_fn(trainer, batch, global_step)`, collate functions, I/O options, and an optimizer built
on `model.parameters()` before the Trainer applied PEFT and the layout. Each one either means
the same in collie or is refused in one line."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch

from collie.config import ConfigError
from collie.data.collate import ColliePadder
from collie.models.loss import IGNORE_INDEX, GPTLMLoss


def step_loss_fn(train_fn: Callable) -> Callable[[Any, dict, int], torch.Tensor]:
    """A train_fn called as `(trainer, batch, global_step)` (CoLLiE) or `(trainer, batch)`; it
    returns the micro-batch's loss tensor, and collie runs backward and the optimizer step."""
    try:
        takes_step = len(inspect.signature(train_fn).parameters) >= 3
    except (TypeError, ValueError):  # a builtin or C callable: CoLLiE's form
        takes_step = True

    def loss_of(trainer, batch: dict, global_step: int) -> torch.Tensor:
        loss = train_fn(trainer, batch, global_step) if takes_step else train_fn(trainer, batch)
        if not (torch.is_tensor(loss) and loss.requires_grad):
            raise ConfigError("train_fn: return the loss tensor; collie runs backward and the optimizer step "
                              "itself (CoLLiE's train_fn called trainer.engine.backward, a DeepSpeed engine "
                              f"collie does not have), got {type(loss).__name__}")
        return loss
    return loss_of


def pipeline_loss(loss_fn: Callable, chunked: bool) -> Optional[Callable]:
    """The loss the last pipeline stage computes: None for collie's own next-token loss, else the
    user's (a token mean over its labels, as without pipelining)."""
    if type(loss_fn) is GPTLMLoss and loss_fn.ignore_index == IGNORE_INDEX:
        return None
    if chunked:
        raise ConfigError("loss_fn: with loss_chunk_tokens the last stage computes collie's next-token loss "
                          "inside the model; set loss_chunk_tokens=0 to use your loss_fn")
    return loss_fn


def training_collate(collate_fn: Optional[Callable], pipelined: bool) -> Optional[Callable]:
    """A caller's `train_dataset_collate_fn`, or None to pad with the layout's own padder (a
    ColliePadder given CoLLiE's way pads on its side, to what the layout needs)."""
    if collate_fn is None or isinstance(collate_fn, ColliePadder):
        return None
    if pipelined:
        raise ConfigError("train_dataset_collate_fn: pipeline stages exchange fixed-shape activations, so collie "
                          "pads training batches itself under pp_size > 1; leave it out")
    return collate_fn


def optimizer_for_peft(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> int:
    """Point an optimizer built on the model before the Trainer put PEFT on it at the parameters
    that train. CoLLiE attached peft in `from_pretrained`, so its scripts build the optimizer
    over `model.parameters()` (or those that require grad) next; here that list holds the base
    parameters, frozen since, and not the adapters or the prompt. Its one parameter group takes
    the trainable parameters, with its own settings; returns how many it gained (0: it had them)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in trainable if id(p) not in held]
    if not missing:
        return 0
    if len(optimizer.param_groups) != 1:
        raise ConfigError(f"optimizer: built before the Trainer added the PEFT parameters, with "
                          f"{len(optimizer.param_groups)} parameter groups collie cannot place them in; give it one "
                          "group, or leave it out and set config.optimizer")
    if optimizer.state:
        raise ConfigError("optimizer: it already has state for the base model's parameters, which PEFT freezes; "
                          "create it before training starts or let the Trainer build it from config.optimizer")
    optimizer.param_groups[0]["params"] = trainable
    return len(missing)


def check_io_options(process_exclusion: bool, options: dict) -> None:
    """CoLLiE's save/load options: `process_exclusion` (one process at a time, to bound memory)
    is what collie always does in effect — each rank writes or reads only its own shards — and
    `protocol` must be a local/fsspec path."""
    protocol = options.pop("protocol", "file")
    if protocol != "file":
        raise ConfigError(f"protocol={protocol!r}: collie reads and writes through fsspec paths "
                          "(s3://…, gs://…, local); give the path with its scheme instead")
    if options:
        raise ConfigError(f"{', '.join(sorted(options))}: not an option of collie's save/load methods")

def rebind_parameters(optimizer: torch.optim.Optimizer, names: dict[int, str],
                      new_params: dict[str, torch.Tensor]) -> None:
    """Point an optimizer built before parallelization (CoLLiE's API order) at the parameters
    FSDP/tensor parallel put in the model's place (by name: wrappers do not change state-dict
    names); parameters another pipeline stage owns leave it."""
    stale = [p for group in optimizer.param_groups for p in group["params"]
             if id(p) in names and new_params.get(names[id(p)]) is not p]
    if not stale:
        return
    if optimizer.state:
        raise ConfigError("optimizer: it already has state for parameters that parallelization replaced; "
                          "create it before training starts or let the Trainer build it from config.optimizer")
    for group in optimizer.param_groups:
        group["params"] = [new_params[names[id(p)]] if id(p) in names else p for p in group["params"]
                           if id(p) not in names or names[id(p)] in new_params]
