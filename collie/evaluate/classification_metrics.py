"""Accuracy, and precision / recall / F-beta (micro and macro, with a per-class report), of the
predictions an `EvaluatorForClassification` makes, over every data-parallel rank."""

from __future__ import annotations

from typing import Optional, Union

import torch

from collie.evaluate.metrics import PairMetric


class _PredictionMetric(PairMetric):
    def pairs_of(self, result: dict) -> list[tuple[int, int]]:
        return class_pairs(result)


def class_pairs(result: dict) -> list[tuple[int, int]]:
    """(prediction, target) classes of a batch result: lists of ints (collie's evaluators) or
    CoLLiE's tensors: `pred` [B], [B, classes] scores, [B, L] or [B, L, classes]; `target` [B] or
    [B, L]; `seq_len` [B] leaves out a sequence's padding."""
    pred, target = _as_tensor(result["pred"]), _as_tensor(result["target"])
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(dim=-1)
    if pred.dim() != target.dim() or pred.numel() != target.numel():
        raise ValueError(f"pred of shape {tuple(_as_tensor(result['pred']).shape)} does not fit target of shape "
                         f"{tuple(target.shape)}: expected the same shape, or one more dimension of class scores")
    keep = torch.ones(target.shape, dtype=torch.bool)
    if result.get("seq_len") is not None and target.dim() > 1:
        keep = torch.arange(target.shape[1])[None, :] < _as_tensor(result["seq_len"]).reshape(-1, 1).cpu()
    keep = keep.reshape(-1)
    return list(zip(pred.reshape(-1).cpu()[keep].tolist(), target.reshape(-1).cpu()[keep].tolist()))


def _as_tensor(values) -> torch.Tensor:
    if torch.is_tensor(values):
        return values.detach()
    if values and torch.is_tensor(values[0]):
        return torch.stack([value.detach() for value in values])
    return torch.tensor(values)


class AccuracyMetric(_PredictionMetric):
    def get_metric(self) -> dict:
        if not self.pairs:
            return {"acc": float("nan")}
        return {"acc": sum(p == t for p, t in self.pairs) / len(self.pairs)}


class ClassifyFPreRecMetric(_PredictionMetric):
    """`f` (F-beta), `pre`, `rec` averaged `f_type="micro"` (pooled counts) or `"macro"` (mean
    over the classes seen); with `only_gross=False` also `f-<class>`, `pre-<class>`, `rec-<class>`.
    `tag_vocab`: class names, a list by index or CoLLiE's `{name: index}`, for those keys.
    `average`, `report`, `labels` are collie's earlier names for `f_type`, `not only_gross`,
    `tag_vocab` (a list); given, they win."""

    def __init__(self, gather_result: bool = False, tag_vocab: Union[dict, list, None] = None, only_gross: bool = True,
                 f_type: str = "micro", beta: float = 1.0, *, average: Optional[str] = None,
                 report: Optional[bool] = None, labels: Optional[list[str]] = None) -> None:
        self.average = average or f_type
        if self.average not in ("micro", "macro"):
            raise ValueError(f"f_type: {self.average!r} is not one of micro, macro")
        self.report = (not only_gross) if report is None else report
        names = labels if labels is not None else tag_vocab
        self.names = ({index: name for name, index in names.items()} if isinstance(names, dict)
                      else dict(enumerate(names)) if names is not None else {})
        self.beta = beta
        super().__init__(gather_result)

    def get_metric(self) -> dict:
        classes = sorted({c for pair in self.pairs for c in pair})
        counts = {c: {"tp": 0, "fp": 0, "fn": 0} for c in classes}
        for pred, target in self.pairs:
            if pred == target:
                counts[pred]["tp"] += 1
            else:
                counts[pred]["fp"] += 1
                counts[target]["fn"] += 1
        per_class = {c: _scores(**counts[c], beta=self.beta) for c in classes}
        if self.average == "micro":
            pre, rec, f = _scores(*(sum(counts[c][k] for c in classes) for k in ("tp", "fp", "fn")), beta=self.beta)
        else:
            n = max(1, len(classes))
            pre, rec, f = (sum(per_class[c][i] for c in classes) / n for i in range(3))
        result = {"f": f, "pre": pre, "rec": rec}
        if self.report:
            for c in classes:
                name = self.names.get(c, str(c))
                result.update({f"pre-{name}": per_class[c][0], f"rec-{name}": per_class[c][1],
                               f"f-{name}": per_class[c][2]})
        return result


def _scores(tp: int, fp: int, fn: int, beta: float) -> tuple[float, float, float]:
    pre = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    b2 = beta * beta
    f = (1 + b2) * pre * rec / (b2 * pre + rec) if pre + rec else 0.0
    return pre, rec, f
