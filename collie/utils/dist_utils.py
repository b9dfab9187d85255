"""CoLLiE's `collie.utils.dist_utils`: the process group, seeding and the global `env`, on
collie's runtime (`collie.distributed.runtime`). DeepSpeed's engine has no counterpart here."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from collie.config import CollieConfig
from collie.distributed.runtime import Runtime, build_runtime, latest_runtime
from collie.launch_env import read_launch_env
from collie.tensors import broadcast_tensor

__all__ = ["setup_distribution", "set_seed", "env", "setup_ds_engine", "zero3_load_state_dict", "is_zero3_enabled",
           "broadcast_tensor", "Env"]


def setup_distribution(config: CollieConfig) -> Runtime:
    """The process group (torchrun or Slurm) and the (pp, dp, tp) mesh of `config`'s layout."""
    if isinstance(config, str):
        config = CollieConfig.load(config)
    config.validate()
    return build_runtime(config)


def set_seed(config: CollieConfig) -> None:
    """Seed Python, NumPy and torch (every device) with `config.seed`."""
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)


def is_zero3_enabled(config: CollieConfig) -> bool:
    return config.zero_stage == 3


def setup_ds_engine(*args, **kwargs):
    raise NotImplementedError("setup_ds_engine: collie has no DeepSpeed engine; the Trainer applies the layout "
                      "(FSDP2, DTensor, torch pipelining) itself — give it the model and config")


def zero3_load_state_dict(model: torch.nn.Module, state_dict: dict):
    raise NotImplementedError("zero3_load_state_dict: collie's ZeRO-3 is FSDP2; load weights with Trainer.load_model "
                      "(HF format) or Trainer.load_checkpoint, which read each rank's shards")


class Env:
    """CoLLiE's `env`: ranks, sizes and groups of the run built last in this process
    (`setup_distribution` or a Trainer); before one is built, what the launcher says."""

    @staticmethod
    def _runtime() -> Optional[Runtime]:
        return latest_runtime()

    @staticmethod
    def _launch(key: str, default: int) -> int:
        return int(read_launch_env().get(key, default))

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else self._launch("RANK", 0)

    @property
    def local_rank(self) -> int:
        return self._launch("LOCAL_RANK", 0)

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_initialized() else self._launch("WORLD_SIZE", 1)

    @property
    def seed(self) -> int:
        """The seed torch's default generator was seeded with (`set_seed` sets it)."""
        return torch.initial_seed()

    def _size(self, name: str) -> int:
        runtime = self._runtime()
        return getattr(runtime, name) if runtime is not None else 1

    def _rank(self, name: str) -> int:
        runtime = self._runtime()
        return getattr(runtime, name) if runtime is not None else 0

    dp_size = property(lambda self: self._size("dp_size"))
    tp_size = property(lambda self: self._size("tp_size"))
    pp_size = property(lambda self: self._size("pp_size"))
    dp_rank = property(lambda self: self._rank("dp_rank"))
    tp_rank = property(lambda self: self._rank("tp_rank"))
    pp_rank = property(lambda self: self._rank("pp_rank"))

    @property
    def mp_rank(self) -> int:
        """The rank within the model-parallel (pp × tp) group."""
        return self.pp_rank * self.tp_size + self.tp_rank

    @property
    def is_pipeline(self) -> bool:
        return self.pp_size > 1

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def _group(self, name: str):
        runtime = self._runtime()
        if runtime is None or runtime.mesh is None:
            return None
        return runtime.mesh[name].get_group()

    dp_group = property(lambda self: self._group("dp"))
    tp_group = property(lambda self: self._group("tp"))
    pp_group = property(lambda self: self._group("pp"))

    @staticmethod
    def barrier(group=None) -> None:
        if dist.is_initialized():
            dist.barrier(group=group)


env = Env()
