"""The evaluators a config asks for (`data.eval_file`, `data.generation_samples`), as `collie
train` and `collie eval` run them."""

from __future__ import annotations

from collie.config import CollieConfig
from collie.data import CollieDatasetForGeneration, CollieDatasetForTraining
from collie.data.datasets import generation_records
from collie.evaluate.decode_metric import DecodeMetric
from collie.evaluate.evaluators import Evaluator, EvaluatorForPerplexity
from collie.evaluate.generation_evaluator import EvaluatorForGeneration
from collie.evaluate.metrics import PPLMetric


def configured_evaluators(model, config: CollieConfig, tokenizer) -> list[Evaluator]:
    """Perplexity on data.eval_file, and greedy generation of its first data.generation_samples
    input/output records (exact match)."""
    data = config.data
    if not data.eval_file:
        return []
    eval_ds = CollieDatasetForTraining(data.eval_file, tokenizer, max_length=data.max_length)
    evaluators: list[Evaluator] = [EvaluatorForPerplexity(model, config, eval_ds, {"ppl": PPLMetric()})]
    if data.generation_samples:
        prompts = CollieDatasetForGeneration(generation_records(eval_ds, data.generation_samples), tokenizer,
                                             max_length=data.max_length)
        evaluators.append(EvaluatorForGeneration(model, config, prompts, {"decode": DecodeMetric(verbose=False)},
                                                 max_new_tokens=data.max_new_tokens))
    return evaluators
