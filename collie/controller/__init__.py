"""CoLLiE's `collie.controller`: the Trainer, the evaluators and the Server."""

from collie.controller.evaluator import (
    Evaluator,
    EvaluatorForClassfication,
    EvaluatorForGeneration,
    EvaluatorForPerplexity,
)
from collie.controller.trainer import Trainer
from collie.models.lazy_exports import lazy_exports

# The Server is imported on first use: the serving stack (FastAPI, uvicorn) is not a cost of
# every process that trains.
__getattr__, __dir__ = lazy_exports(globals(), {"Server": "collie.controller.server:Server"})

__all__ = ["Trainer", "Evaluator", "EvaluatorForPerplexity", "EvaluatorForClassfication", "EvaluatorForGeneration",
           "Server"]
