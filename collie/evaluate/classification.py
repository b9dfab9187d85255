"""Classification by the model's own likelihood: every option is scored as a continuation of
the prompt (sum of its tokens' log-probabilities, or their mean with `length_normalised`), and
the best one is the prediction. Runs on any layout, as the perplexity evaluator does.

CoLLiE's `EvaluatorForClassfication` is this class; CoLLiE scored an option by its mean loss,
which is `length_normalised=True` here."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from collie.dtypes import at_least_fp32
from collie.evaluate.evaluators import Evaluator
from collie.evaluate.metrics import BaseMetric
from collie.models.loss import IGNORE_INDEX
from collie.tensors import whole


class EvaluatorForClassification(Evaluator):
    def __init__(self, model: torch.nn.Module, config, dataset, metrics: Optional[dict[str, BaseMetric]] = None,
                 length_normalised: bool = False, only_latin: bool = True, max_new_tokens: int = 3,
                 loss_fn: Optional[Callable] = None, **kwargs: Any) -> None:
        # CoLLiE's only_latin / max_new_tokens steer its generation-based (HELM) classification.
        if not only_latin or max_new_tokens != 3:
            raise ValueError("EvaluatorForClassification(only_latin, max_new_tokens): collie classifies by option "
                             "likelihood only, not by generating (HELM style); leave them out")
        if loss_fn is not None:
            raise ValueError("EvaluatorForClassification(loss_fn=...): options are scored by their log-likelihood; "
                             "length_normalised=True scores them by mean loss, as CoLLiE's GPTLMLoss did")
        super().__init__(model, config, dataset, metrics, **kwargs)
        self.length_normalised = length_normalised

    def prepare(self, items: list[dict]) -> list[dict]:
        return items  # options are expanded and padded in eval_batch

    def eval_batch(self, items: list[dict]) -> dict:
        rows = [{"input_ids": item["input_ids"] + option,
                 "labels": [IGNORE_INDEX] * len(item["input_ids"]) + option}
                for item in items for option in item["options"]]
        batch = self.collate_fn(rows)
        labels = batch["labels"].to(self.device)
        logits = whole(self.model(batch["input_ids"].to(self.device),
                                  attention_mask=batch["attention_mask"].to(self.device)).logits)
        logits = logits[:, :-1].to(at_least_fp32(logits.dtype))
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        token_logp = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (token_logp * mask).sum(-1)
        scores = sums / mask.sum(-1) if self.length_normalised else sums
        preds, start = [], 0
        for item in items:
            count = len(item["options"])
            preds.append(int(torch.argmax(scores[start:start + count])))
            start += count
        return {"pred": preds, "target": [item["target"] for item in items]}
