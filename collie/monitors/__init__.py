from collie.monitors.monitors import (
                                      EvalMonitor,
                                      LossMonitor,
                                      LRMonitor,
                                      MemoryMonitor,
                                      MFUMonitor,
                                      Monitor,
                                      StepStats,
                                      StepTimeMonitor,
                                      TGSMonitor,
                                      default_monitors,
)
from collie.monitors.sinks import ConsoleSink, CSVSink, Sink, TensorBoardSink

__all__ = ["ConsoleSink", "CSVSink", "EvalMonitor", "LossMonitor", "LRMonitor", "MemoryMonitor", "MFUMonitor",
           "Monitor", "Sink", "StepStats", "StepTimeMonitor", "TGSMonitor", "TensorBoardSink", "default_monitors"]
