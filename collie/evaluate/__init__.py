from collie.evaluate.classification import EvaluatorForClassification
from collie.evaluate.classification_metrics import AccuracyMetric, ClassifyFPreRecMetric
from collie.evaluate.evaluators import Evaluator, EvaluatorForGeneration, EvaluatorForPerplexity
from collie.evaluate.metrics import BaseMetric, DecodeMetric, PPLMetric
from collie.evaluate.text_metrics import BleuMetric, RougeMetric

__all__ = ["AccuracyMetric", "BaseMetric", "BleuMetric", "ClassifyFPreRecMetric", "DecodeMetric", "Evaluator",
           "EvaluatorForClassification", "EvaluatorForGeneration", "EvaluatorForPerplexity", "PPLMetric",
           "RougeMetric"]
