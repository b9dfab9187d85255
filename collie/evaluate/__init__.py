from collie.evaluate.evaluators import Evaluator, EvaluatorForGeneration, EvaluatorForPerplexity
from collie.evaluate.metrics import BaseMetric, DecodeMetric, PPLMetric

__all__ = ["BaseMetric", "DecodeMetric", "Evaluator", "EvaluatorForGeneration", "EvaluatorForPerplexity",
           "PPLMetric"]
