"""Weights & Biases (`logging: [wandb]`): every numeric column of each step, at that step.

Optional: `pip install wandb`. The project is `monitor.wandb_project`, else `WANDB_PROJECT`
(default "collie"), with `monitor.wandb_entity` and `wandb_group` (CoLLiE's ds_config wandb team
and group); the run's files go under output_dir; `WANDB_MODE=offline` keeps them there without
an account.
"""

from __future__ import annotations

import os
from typing import Optional

from collie.config import ConfigError
from collie.monitors.sinks import Sink


class WandbSink(Sink):
    def __init__(self, output_dir: Optional[str], config: dict, resumed: bool, monitor=None) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging: 'wandb' needs the `wandb` package (pip install wandb)") from None
        name = os.path.basename(os.path.normpath(output_dir)) if output_dir else None
        project = getattr(monitor, "wandb_project", None) or os.environ.get("WANDB_PROJECT", "collie")
        self.run = wandb.init(project=project, entity=getattr(monitor, "wandb_entity", None),
                              group=getattr(monitor, "wandb_group", None), name=name, dir=output_dir,
                              config=config, resume="allow" if resumed else None)

    def write(self, row: dict) -> None:
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.run.log(numbers, step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()
