"""Where this process runs: rank, world size, device and backend, from torchrun or Slurm."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from collie.launch_env import read_launch_env


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: Optional[float] = None) -> DistEnv:
    """Initialise the default process group when launched with several processes; a collective
    that waits longer than `timeout_s` (None: PyTorch's default) fails instead of hanging."""
    env = read_launch_env()
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if world_size > 1 and not dist.is_initialized():
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            if key in env:
                os.environ[key] = env[key]
        timeout = timedelta(seconds=timeout_s) if timeout_s else None
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None, timeout=timeout,
                                **restart_safe_rendezvous(env, rank, world_size, timeout))
    return DistEnv(rank, world_size, local_rank, device, backend)


def restart_safe_rendezvous(env: dict[str, str], rank: int, world_size: int,
                            timeout: Optional[timedelta]) -> dict:
    """The store to form the process group in, when torchrun shares its own store with the
    workers (its default): a view with a prefix per restart, so workers of a restarted attempt
    never read the peer addresses the previous attempt left there (PyTorch issue 135712:
    restarted gloo/NCCL groups connected to dead ports). Otherwise the usual env:// rendezvous."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout or timedelta(minutes=10))
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"collie/restart-{attempt}/", store), "rank": rank, "world_size": world_size}
