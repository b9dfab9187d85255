"""CoLLiE's `collie.controller.evaluator`: collie's evaluators (`collie.evaluate`), with CoLLiE's
spelling `EvaluatorForClassfication` for the classification one."""

from collie.evaluate.classification import EvaluatorForClassification
from collie.evaluate.evaluators import Evaluator, EvaluatorForPerplexity
from collie.evaluate.generation_evaluator import EvaluatorForGeneration

EvaluatorForClassfication = EvaluatorForClassification

__all__ = ["Evaluator", "EvaluatorForClassfication", "EvaluatorForClassification", "EvaluatorForGeneration",
           "EvaluatorForPerplexity"]
