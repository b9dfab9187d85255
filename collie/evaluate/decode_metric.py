"""The decoded samples of a generation evaluation: kept for the results, scored by exact match
against targets, and (CoLLiE's options) logged and appended to a file by the main process."""

from __future__ import annotations

import json
import logging
from typing import Callable, Optional

import torch.distributed as dist

from collie.evaluate.metrics import BaseMetric, gather_lists

log = logging.getLogger("collie")


class DecodeMetric(BaseMetric):
    """Reads `pred` (decoded strings) and, when present, `prompt` and `target`.

    `verbose`: log each output once every rank's samples are combined, on the main process.
    `save_to_file`: append each sample to `save_path` as one JSON line `{"prompt", "pred",
    "target"}` (an output's own newlines stay inside its line); the path is checked writable
    here, so a wrong path fails before the evaluation, not after it."""

    combines_ranks = True

    def __init__(self, verbose: bool = True, save_to_file: bool = False, save_path: Optional[str] = None,
                 gather_result: bool = True, normalise: Callable[[str], str] = str.strip) -> None:
        super().__init__(gather_result)
        if save_to_file:
            if not save_path:
                raise ValueError("DecodeMetric(save_to_file=True) needs save_path, the file the samples are appended to")
            try:
                open(save_path, "a", encoding="utf-8").close()
            except OSError as error:
                raise ValueError(f"DecodeMetric: cannot write save_path {save_path!r}: {error.strerror}") from None
        self.verbose, self.save_to_file, self.save_path = verbose, save_to_file, save_path
        self.normalise = normalise
        self.reset()

    def reset(self) -> None:
        self.samples: list[dict] = []

    def update(self, result: dict) -> None:
        if "pred" not in result:
            raise KeyError(f"DecodeMetric: the result has keys {sorted(result)}; it needs 'pred'")
        preds = list(result["pred"])
        prompts, targets = _column(result, "prompt", len(preds)), _column(result, "target", len(preds))
        for prompt, pred, target in zip(prompts, preds, targets):
            self.samples.append({"prompt": prompt, "pred": pred, "target": target})

    def reduce(self, group) -> None:
        self.samples = gather_lists(self.samples, group)
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        if self.verbose:
            for sample in self.samples:
                log.info("decode: %r", sample["pred"])
        if self.save_to_file:
            with open(self.save_path, "a", encoding="utf-8") as out:
                out.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in self.samples)

    def get_metric(self) -> dict:
        # "samples" is not a number: sinks skip it, the console shows it.
        scored = [s for s in self.samples if s["target"] is not None]
        if not scored:
            return {"samples": list(self.samples)}
        hits = sum(self.normalise(s["pred"]) == self.normalise(s["target"]) for s in scored)
        return {"exact_match": hits / len(scored), "samples": list(self.samples)}


def _column(result: dict, key: str, length: int) -> list:
    values = result.get(key)
    return [None] * length if values is None else list(values)
