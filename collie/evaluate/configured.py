"""The evaluators a config asks for (`data.eval_file`, `data.generation_samples`), as `collie
train` and `collie eval` run them."""

from __future__ import annotations

from collie.config import CollieConfig
from collie.config.preference_settings import preference_settings
from collie.data import CollieDatasetForGeneration, CollieDatasetForPreference, CollieDatasetForTraining
from collie.data.datasets import generation_records
from collie.evaluate.decode_metric import DecodeMetric
from collie.evaluate.evaluators import Evaluator, EvaluatorForPerplexity
from collie.evaluate.generation_evaluator import EvaluatorForGeneration
from collie.evaluate.metrics import PPLMetric
from collie.evaluate.preference import EvaluatorForPreference


def configured_evaluators(model, config: CollieConfig, tokenizer) -> list[Evaluator]:
    """Perplexity on data.eval_file (for preference training: the preference loss, rewards and
    accuracy on its pairs), and greedy generation of its first data.generation_samples
    input/output records, or text prompts with their chosen completion (exact match)."""
    data = config.data
    if not data.eval_file:
        return []
    preference = preference_settings(config)
    if preference is not None:
        # Pairs: the preference loss, rewards and accuracy; generation answers their text prompts.
        eval_ds = CollieDatasetForPreference(data.eval_file, tokenizer, max_length=data.max_length)
        evaluators: list[Evaluator] = [EvaluatorForPreference(model, config, eval_ds, preference.loss)]
        samples = [{"text": r["prompt"], "target": r["chosen"]} for r in eval_ds.records
                   if isinstance(r.get("prompt"), str) and isinstance(r["chosen"], str)]
    else:
        eval_ds = CollieDatasetForTraining(data.eval_file, tokenizer, max_length=data.max_length)
        evaluators = [EvaluatorForPerplexity(model, config, eval_ds, {"ppl": PPLMetric()})]
        samples = generation_records(eval_ds, data.generation_samples)
    if data.generation_samples:
        prompts = CollieDatasetForGeneration(samples[:data.generation_samples], tokenizer, max_length=data.max_length)
        evaluators.append(EvaluatorForGeneration(model, config, prompts, {"decode": DecodeMetric(verbose=False)},
                                                 max_new_tokens=data.max_new_tokens))
    return evaluators
