"""CoLLiE's `collie.metrics.classify_f1_pre_rec_metric`."""

from collie.evaluate.classification_metrics import ClassifyFPreRecMetric

__all__ = ["ClassifyFPreRecMetric"]
