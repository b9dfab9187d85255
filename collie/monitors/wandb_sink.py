"""Weights & Biases (`logging: [wandb]`): every numeric column of each step, at that step.

Optional: `pip install wandb`. The project is `WANDB_PROJECT` (default "collie"); the run's
files go under output_dir; `WANDB_MODE=offline` keeps them there without an account.
"""

from __future__ import annotations

import os
from typing import Optional

from collie.config import ConfigError
from collie.monitors.sinks import Sink


class WandbSink(Sink):
    def __init__(self, output_dir: Optional[str], config: dict, resumed: bool) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging: 'wandb' needs the `wandb` package (pip install wandb)") from None
        name = os.path.basename(os.path.normpath(output_dir)) if output_dir else None
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "collie"), name=name, dir=output_dir,
                              config=config, resume="allow" if resumed else None)

    def write(self, row: dict) -> None:
        numbers = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.run.log(numbers, step=int(row["step"]))

    def close(self) -> None:
        self.run.finish()
