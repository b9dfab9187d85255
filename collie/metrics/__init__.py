"""CoLLiE's `collie.metrics`: collie's metrics (`collie.evaluate`) under CoLLiE's import paths."""

from collie.metrics.accuracy import AccuracyMetric
from collie.metrics.base import BaseMetric
from collie.metrics.bleu import BleuMetric
from collie.metrics.classify_f1_pre_rec_metric import ClassifyFPreRecMetric
from collie.metrics.decode import DecodeMetric
from collie.metrics.ppl import PPLMetric
from collie.metrics.rouge import RougeMetric

__all__ = ["AccuracyMetric", "BaseMetric", "BleuMetric", "ClassifyFPreRecMetric", "DecodeMetric", "PPLMetric",
           "RougeMetric"]
