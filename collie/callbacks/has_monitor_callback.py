"""CoLLiE's `HasMonitorCallback`: the base of callbacks that watch one evaluation result
(collie's `MetricWatcher`), with CoLLiE's signature and methods."""

from __future__ import annotations

from typing import Callable, Optional, Union

from collie.trainer.checkpoint_callbacks import MetricWatcher

__all__ = ["HasMonitorCallback", "ResultsMonitor"]

Monitor = Union[str, Callable[[dict], Optional[float]], None]


class HasMonitorCallback(MetricWatcher):
    """`monitor`: a result's name or a function of the results (None when none is needed,
    unless `must_have_monitor`); `larger_better`: whether a higher value is better.
    `monitor_value` is the best value `is_better_results` has kept so far."""

    def __init__(self, monitor: Monitor, larger_better: bool = True, must_have_monitor: bool = False) -> None:
        if must_have_monitor and monitor is None:
            raise ValueError(f"{type(self).__name__}: set monitor (an evaluation result's name, or a function "
                             "of the results that returns the value)")
        super().__init__(monitor, "max" if larger_better else "min")
        self.must_have_monitor = must_have_monitor
        self.monitor_value = float("-inf") if larger_better else float("inf")

    def get_monitor_value(self, results: dict) -> Optional[float]:
        """The monitored value in `results` (None without results or without a monitor)."""
        if not results or self.monitor is None:
            return None
        return self.value(results)

    def is_better_monitor_value(self, monitor_value: Optional[float], keep_if_better: bool = True) -> bool:
        better = self.better(monitor_value, self.monitor_value)
        if better and keep_if_better:
            self.monitor_value = monitor_value
        return better

    def is_better_results(self, results: dict, keep_if_better: bool = True) -> bool:
        return self.is_better_monitor_value(self.get_monitor_value(results), keep_if_better)


# CoLLiE's ResultsMonitor is HasMonitorCallback without `must_have_monitor`.
ResultsMonitor = HasMonitorCallback
