"""CoLLiE's `collie.metrics.base`."""

from collie.evaluate.metrics import BaseMetric

__all__ = ["BaseMetric"]
