"""How many processes a launcher started, and where they meet: torchrun's variables, or the
same derived from Slurm's (so `srun python x.py` works). Read by the models (an empty model
under a multi-process launch) and by `collie.distributed.env` (process groups)."""

from __future__ import annotations

import os
import re


def read_launch_env(environ: dict | None = None) -> dict[str, str]:
    """torchrun's variables, or the same derived from Slurm's (so `srun python x.py` works)."""
    env = dict(os.environ if environ is None else environ)
    if "RANK" in env and "WORLD_SIZE" in env:
        return env
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", first_slurm_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))
    return env


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm nodelist: 'gpu[003-005,010],cpu1' → 'gpu003'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"SLURM_JOB_NODELIST: cannot parse {nodelist!r}")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def launched_processes() -> int:
    """The world size the launcher asked for (1 without a launcher)."""
    return int(read_launch_env().get("WORLD_SIZE", "1"))
