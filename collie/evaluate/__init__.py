from collie.evaluate.classification import EvaluatorForClassification
from collie.evaluate.classification_metrics import AccuracyMetric, ClassifyFPreRecMetric
from collie.evaluate.decode_metric import DecodeMetric
from collie.evaluate.evaluators import Evaluator, EvaluatorForPerplexity
from collie.evaluate.generation_evaluator import EvaluatorForGeneration
from collie.evaluate.metrics import BaseMetric, PPLMetric
from collie.evaluate.text_metrics import BleuMetric, RougeMetric

__all__ = ["AccuracyMetric", "BaseMetric", "BleuMetric", "ClassifyFPreRecMetric", "DecodeMetric", "Evaluator",
           "EvaluatorForClassification", "EvaluatorForGeneration", "EvaluatorForPerplexity", "PPLMetric",
           "RougeMetric"]
