"""Accuracy, and precision / recall / F1 (micro and macro, with a per-class report), of the
predictions an `EvaluatorForClassification` makes, over every data-parallel rank."""

from __future__ import annotations

from collie.evaluate.metrics import PairMetric


class _PredictionMetric(PairMetric):
    def pairs_of(self, result: dict) -> list[tuple[int, int]]:
        return [(int(p), int(t)) for p, t in zip(result["pred"], result["target"])]


class AccuracyMetric(_PredictionMetric):
    def get_metric(self) -> dict:
        if not self.pairs:
            return {"acc": float("nan")}
        return {"acc": sum(p == t for p, t in self.pairs) / len(self.pairs)}


class ClassifyFPreRecMetric(_PredictionMetric):
    """`f`, `pre`, `rec` averaged `average="micro"` (pooled counts) or `"macro"` (mean over the
    classes seen); with `report=True` also `f-<class>`, `pre-<class>`, `rec-<class>`.
    `labels`: class names by index, for the report keys."""

    def __init__(self, average: str = "micro", report: bool = False, labels: list[str] | None = None) -> None:
        if average not in ("micro", "macro"):
            raise ValueError(f"average: {average!r} is not one of micro, macro")
        self.average, self.report, self.labels = average, report, labels
        super().__init__()

    def get_metric(self) -> dict:
        classes = sorted({c for pair in self.pairs for c in pair})
        counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in classes}
        for pred, target in self.pairs:
            if pred == target:
                counts[pred]["tp"] += 1
            else:
                counts[pred]["fp"] += 1
                counts[target]["fn"] += 1
        per_class = {c: _scores(**counts[c]) for c in classes}
        if self.average == "micro":
            pre, rec, f = _scores(*(sum(counts[c][k] for c in classes) for k in ("tp", "fp", "fn")))
        else:
            n = max(1, len(classes))
            pre, rec, f = (sum(per_class[c][i] for c in classes) / n for i in range(3))
        result = {"f": f, "pre": pre, "rec": rec}
        if self.report:
            for c in classes:
                name = self.labels[c] if self.labels is not None else str(c)
                result.update({f"pre-{name}": per_class[c][0], f"rec-{name}": per_class[c][1],
                               f"f-{name}": per_class[c][2]})
        return result


def _scores(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    pre = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * pre * rec / (pre + rec) if pre + rec else 0.0
    return pre, rec, f
