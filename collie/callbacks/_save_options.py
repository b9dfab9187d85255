"""CoLLiE's saving options that collie's saving does not need, checked in one place for the
callbacks that save (`CheckpointCallback`, `TopkSaver`, `LoadBestModelCallback`)."""

from __future__ import annotations

import logging

log = logging.getLogger("collie")


def check_save_options(owner: str, process_exclusion: bool, kwargs: dict) -> None:
    """CoLLiE passed `kwargs` on to its save functions: accept the ones that mean nothing here
    (with a note), refuse the rest in one line."""
    if process_exclusion:
        log.info("%s: process_exclusion has no effect; collie's checkpoints (DCP) have every rank write "
                 "its own shards", owner)
    if kwargs.get("protocol", "file") != "file":
        raise ValueError(f"{owner}: protocol={kwargs['protocol']!r} is not supported; collie picks the storage "
                         "from the folder itself (a local path or an s3://... URL)")
    if "adapter_name" in kwargs:
        log.info("%s: adapter_name=%r: a collie PEFT run has one adapter, which is saved", owner,
                 kwargs["adapter_name"])
    unknown = sorted(set(kwargs) - {"protocol", "adapter_name"})
    if unknown:
        raise TypeError(f"{owner}: unsupported arguments {', '.join(unknown)}; collie's saving takes folder, "
                        "model_only and peft_only")


def check_peft_only(owner: str, peft_only: bool, trainer) -> None:
    """CoLLiE's `peft_only=False` saved a PEFT run's whole model; collie saves what it trains."""
    if not peft_only and getattr(trainer, "peft", None) is not None:
        raise ValueError(f"{owner}: peft_only=False is not supported; collie saves a PEFT run's trained "
                         "parameters only (merge them into the base model with peft's merge_and_unload)")
