"""The process's place in the (pp, dp, tp) mesh and the collectives the Trainer needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from collie.distributed.env import DistEnv, init_distributed

log = logging.getLogger("collie")


@dataclass
class Runtime:
    env: DistEnv
    dp_size: int
    tp_size: int
    pp_size: int
    mesh: Optional[DeviceMesh] = None

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def dp_rank(self) -> int:
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0

    @property
    def pp_rank(self) -> int:
        return self.mesh["pp"].get_local_rank() if self.mesh is not None else 0

    @property
    def tp_rank(self) -> int:
        return self.mesh["tp"].get_local_rank() if self.mesh is not None else 0

    @property
    def dp_group(self) -> Optional[dist.ProcessGroup]:
        return self.mesh["dp"].get_group() if self.mesh is not None and self.dp_size > 1 else None

    @property
    def pp_group(self) -> Optional[dist.ProcessGroup]:
        return self.mesh["pp"].get_group() if self.mesh is not None and self.pp_size > 1 else None

    def dp_sum(self, values: list[float]) -> list[float]:
        """Sum numbers over data-parallel ranks (identity on one process)."""
        if self.dp_group is None:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.dp_group)
        return t.tolist()

    def pp_sum(self, value: float) -> float:
        """Sum a number over pipeline stages (how the last stage's loss reaches every stage)."""
        if self.pp_group is None:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, group=self.pp_group)
        return float(t)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()


def build_runtime(config) -> Runtime:
    """Initialise the process group (if launched with several processes) and the mesh."""
    env = init_distributed(config.dist_timeout_s)
    inferred = config.dp_size is None
    dp_size = config.resolve_dp_size(env.world_size)
    if inferred and env.world_size > 1 and env.is_main:
        log.info("dp_size inferred as %d (world %d / tp %d / pp %d)", dp_size, env.world_size,
                 config.tp_size, config.pp_size)
    mesh = None
    if env.world_size > 1:
        mesh = init_device_mesh(env.device.type, (config.pp_size, dp_size, config.tp_size),
                                mesh_dim_names=("pp", "dp", "tp"))
    return Runtime(env, dp_size, config.tp_size, config.pp_size, mesh)
