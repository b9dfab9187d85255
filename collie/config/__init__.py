"""The configuration floor: `CollieConfig` (every knob of a run, as plain data), the PEFT and
4-bit settings read from it, and the parallel `Layout` with every layout rule."""

from collie.config.collie_config import (
                                         CHECKPOINTING,
                                         OPTIMIZERS,
                                         CollieConfig,
                                         DataConfig,
                                         OptimizerConfig,
                                         PeftSection,
                                         SchedulerConfig,
                                         ServeSection,
                                         checkpointing_mode,
)
from collie.config.errors import ConfigError
from collie.config.layout import Layout, ModelFacts

__all__ = ["CHECKPOINTING", "OPTIMIZERS", "CollieConfig", "ConfigError", "DataConfig", "Layout", "ModelFacts",
           "OptimizerConfig", "PeftSection", "SchedulerConfig", "ServeSection", "checkpointing_mode"]
