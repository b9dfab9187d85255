from collie.monitors.monitors import (
                                      EvalMonitor,
                                      LossMonitor,
                                      LRMonitor,
                                      MemoryMonitor,
                                      MFUMonitor,
                                      Monitor,
                                      MonitorGroup,
                                      StepStats,
                                      StepTimeMonitor,
                                      TGSMonitor,
                                      default_monitors,
)
from collie.monitors.sinks import ConsoleSink, CSVSink, Sink, TensorBoardSink
from collie.monitors.system_io import CPUMemoryMonitor, DiskIOMonitor, NetworkIOMonitor

__all__ = ["ConsoleSink", "CPUMemoryMonitor", "CSVSink", "DiskIOMonitor", "EvalMonitor", "LossMonitor", "LRMonitor",
           "MemoryMonitor", "MFUMonitor", "Monitor", "MonitorGroup", "NetworkIOMonitor", "Sink",
           "StepStats", "StepTimeMonitor", "TGSMonitor", "TensorBoardSink", "default_monitors"]
