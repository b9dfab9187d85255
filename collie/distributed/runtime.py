"""The process's place in the (pp, dp, tp) mesh and the collectives the Trainer needs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from collie.config import Layout, ModelFacts
from collie.distributed.env import DistEnv, init_distributed

log = logging.getLogger("collie")


@dataclass(frozen=True)
class Runtime:
    """What is resolved when a run starts, never changed after: the process (rank, device,
    backend), the checked layout, and the (pp, dp, tp) mesh."""
    env: DistEnv
    layout: Layout
    mesh: Optional[DeviceMesh] = None

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    @property
    def tp_size(self) -> int:
        return self.layout.tp

    @property
    def pp_size(self) -> int:
        return self.layout.pp

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


_latest: list[Runtime] = []


def latest_runtime() -> Optional[Runtime]:
    """The runtime built last in this process (CoLLiE's global `env` reads its ranks and groups)."""
    return _latest[-1] if _latest else None


def build_runtime(config, model: Optional[ModelFacts] = None, prompt_tuning: bool = False,
                  quantized: bool = False) -> Runtime:
    """Initialise the process group (if launched with several processes), the checked layout
    for its world size, and the mesh."""
    env = init_distributed(config.dist_timeout_s)
    layout = Layout.build(config, env.world_size, model, prompt_tuning=prompt_tuning, quantized=quantized)
    if config.dp_size != layout.dp and env.world_size > 1 and env.is_main:
        given = "" if config.dp_size is None else f" (dp_size={config.dp_size} does not fit)"
        log.info("dp_size set to %d = world %d / tp %d / pp %d%s", layout.dp, env.world_size, layout.tp, layout.pp, given)
    mesh = None
    if env.world_size > 1:
        mesh = init_device_mesh(env.device.type, (layout.pp, layout.dp, layout.tp), mesh_dim_names=("pp", "dp", "tp"))
    runtime = Runtime(env, layout, mesh)
    _latest[:] = [runtime]
    return runtime


def model_facts(model: torch.nn.Module, spec) -> ModelFacts:
    """What the layout checks of a model: its family's dims and whether the family splits."""
    return ModelFacts(spec.dims(model.config), spec.supports_model_parallel, getattr(model.config, "model_type", ""))
