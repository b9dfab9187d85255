"""CoLLiE's `collie.controller`: the Trainer, the evaluators and the Server."""

from collie.controller.evaluator import (
    Evaluator,
    EvaluatorForClassfication,
    EvaluatorForGeneration,
    EvaluatorForPerplexity,
)
from collie.controller.server import Server
from collie.controller.trainer import Trainer

__all__ = ["Trainer", "Evaluator", "EvaluatorForPerplexity", "EvaluatorForClassfication", "EvaluatorForGeneration",
           "Server"]
