"""Running several evaluators as one evaluation, and showing what generation produced."""

from __future__ import annotations

from collections.abc import Iterable


def evaluate_all(evaluators: Iterable) -> dict:
    """Every evaluator's results in one dict; a metric name two evaluators share is prefixed
    with the second one's name."""
    results: dict = {}
    for evaluator in evaluators:
        for key, value in evaluator.evaluate().items():
            results[key if key not in results else f"{evaluator.name}.{key}"] = value
    return results


def sample_lines(results: dict, limit: int = 3) -> list[str]:
    """The first generation samples of `results`, each as prompt / output / target lines."""
    return [f"  prompt: {sample['prompt']!r}\n  output: {sample['pred']!r}\n  target: {sample['target']!r}"
            for sample in results.get("samples", [])[:limit]]
