"""CoLLiE's `collie.utils.monitor`: collie's monitors under CoLLiE's names.

Each takes the run's config (`Monitor(config)`) and turns a step into named columns, which
collie's sinks write (CSV, TensorBoard, W&B: `config.logging`, or a ds_config's
`monitor_config`) where CoLLiE's monitors wrote to DeepSpeed's.
"""

from __future__ import annotations

from collie.monitors.monitors import (
                                      EvalMonitor,
                                      LossMonitor,
                                      LRMonitor,
                                      MemoryMonitor,
                                      StepTimeMonitor,
                                      TGSMonitor,
)
from collie.monitors.monitors import Monitor as BaseMonitor
from collie.monitors.monitors import MonitorGroup as _MultiMonitors
from collie.monitors.system_io import CPUMemoryMonitor, DiskIOMonitor, NetworkIOMonitor

__all__ = ["get_monitor", "BaseMonitor", "StepTimeMonitor", "TGSMonitor", "MemoryMonitor", "LossMonitor", "EvalMonitor",
           "LRMonitor", "NetworkIOMonitor", "DiskIOMonitor", "CPUMemoryMonitor", "_MultiMonitors"]


def get_monitor(config):
    raise NotImplementedError("get_monitor: collie has no DeepSpeed monitor; monitors' columns go to the sinks "
                              "that config.logging (or a ds_config's monitor_config) names")
