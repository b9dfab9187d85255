"""What a LoRA run needs beyond the layers: where its adapters start from and how they are
written out."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from collie.config.peft_settings import LoraSettings
from collie.peft.adapter_files import Ranks, gather_adapters, load_adapter_tensors, read_adapter, write_adapter
from collie.peft.lora import add_lora, init_adapters

log = logging.getLogger("collie")


@dataclass
class LoraRun:
    settings: LoraSettings
    ranks: Ranks
    # Whole adapter tensors read from `settings.adapter` (None: a fresh initialisation).
    start_from: Optional[dict[str, torch.Tensor]] = None

    def initialise(self, module: torch.nn.Module, seed: int) -> None:
        """Fill this rank's adapters, once the model is parallelized."""
        if self.start_from is None:
            init_adapters(module, seed)
        else:
            load_adapter_tensors(module, self.start_from, self.settings.adapter)
            self.start_from = None  # not needed any more; do not keep a copy alive

    def save(self, path: str, module: torch.nn.Module, spec, runtime, base_model: Optional[str]) -> None:
        """peft's files for the adapters in `path` (every rank calls this; rank 0 writes)."""
        tensors = gather_adapters(module, runtime)
        if runtime.env.rank == 0:
            hf_config = getattr(module, "export_config", None) or module.config
            write_adapter(path, tensors, self.ranks, self.settings, hf_config, spec, base_model)


    def record(self, base_model: Optional[str]) -> dict:
        """What a checkpoint records about the adapters (`collie convert` reads it back)."""
        return {"type": "lora", "settings": asdict(self.settings), "ranks": {k: list(v) for k, v in self.ranks.items()},
                "base_model": base_model}


def attach_lora(model: torch.nn.Module, spec, settings: LoraSettings) -> LoraRun:
    """Put the adapters on the (single-device, possibly empty) model and freeze its base."""
    start_from, ranks = None, None
    if settings.adapter:
        settings, ranks, start_from = read_adapter(settings.adapter, model.config, spec)
        log.info("LoRA: continuing from the adapter in %s (its rank and targets apply)", settings.adapter)
    ranks = add_lora(model, spec, settings, ranks)
    return LoraRun(settings, ranks, start_from)
