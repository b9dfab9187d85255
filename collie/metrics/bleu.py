"""CoLLiE's `collie.metrics.bleu`."""

from collie.evaluate.text_metrics import BleuMetric

__all__ = ["BleuMetric"]
