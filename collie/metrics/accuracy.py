"""CoLLiE's `collie.metrics.accuracy`."""

from collie.evaluate.classification_metrics import AccuracyMetric

__all__ = ["AccuracyMetric"]
