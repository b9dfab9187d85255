"""The configuration floor: `CollieConfig` (every knob of a run, in sections), the PEFT and
4-bit settings read from it, and the parallel `Layout` with every layout rule."""

from collie.config.collie_config import CHECKPOINTING, OPTIMIZERS, CollieConfig, checkpointing_mode
from collie.config.errors import ConfigError
from collie.config.layout import Layout, ModelFacts
from collie.config.sections import (
    FLAT_NAMES,
    CheckpointSection,
    ComputeSection,
    DataConfig,
    MemorySection,
    MonitorSection,
    OptimizerConfig,
    ParallelSection,
    PeftSection,
    SchedulerConfig,
    ServeSection,
    SourceSection,
    TrainSection,
)

__all__ = ["CHECKPOINTING", "FLAT_NAMES", "OPTIMIZERS", "CheckpointSection", "CollieConfig", "ComputeSection",
           "ConfigError", "DataConfig", "Layout", "MemorySection", "ModelFacts", "MonitorSection", "OptimizerConfig",
           "ParallelSection", "PeftSection", "SchedulerConfig", "ServeSection", "SourceSection", "TrainSection",
           "checkpointing_mode"]
