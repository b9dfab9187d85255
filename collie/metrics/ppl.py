"""CoLLiE's `collie.metrics.ppl`."""

from collie.evaluate.metrics import PPLMetric

__all__ = ["PPLMetric"]
