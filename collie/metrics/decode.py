"""CoLLiE's `collie.metrics.decode`."""

from collie.evaluate.decode_metric import DecodeMetric

__all__ = ["DecodeMetric"]
