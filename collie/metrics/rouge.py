"""CoLLiE's `collie.metrics.rouge`."""

from collie.evaluate.text_metrics import RougeMetric

__all__ = ["RougeMetric"]
