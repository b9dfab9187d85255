"""Generation evaluation: greedy (or sampled) continuation of each prompt, decoded to text.

Prompts come from generation records (`{"text", "target"}`), from training records (the prompt
part generates, the answer is the target) or raw token ids; settings from keyword arguments or
CoLLiE's `generation_config` (a transformers `GenerationConfig` or a dict of its fields).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from transformers import GenerationConfig

from collie.evaluate.eval_items import generation_item
from collie.evaluate.evaluators import Evaluator
from collie.evaluate.metrics import BaseMetric
from collie.generation import GenerationMixin
from collie.tokenization import pad_token_id

# The GenerationConfig fields collie's `generate` honours.
SUPPORTED_FIELDS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
                    "pad_token_id")
# Fields that change nothing here: transformers' bookkeeping, the id a prompt starts with (a
# continuation never emits it), and the KV cache (always used).
_IGNORED_FIELDS = ("transformers_version", "_from_model_config", "_commit_hash", "bos_token_id", "use_cache")


def generation_settings(generation_config: Union[GenerationConfig, dict]) -> dict:
    """The `generate` arguments a GenerationConfig (or a dict of its fields) sets; a field collie
    cannot honour (beams, penalties, ...) is refused in one line."""
    config = generation_config if isinstance(generation_config, GenerationConfig) \
        else GenerationConfig(**generation_config)
    fields = {key: value for key, value in config.to_diff_dict().items()
              if key not in _IGNORED_FIELDS and value is not None}
    unsupported = sorted(set(fields) - set(SUPPORTED_FIELDS))
    if unsupported:
        raise ValueError(f"generation_config: collie's generate does not support {', '.join(unsupported)}; "
                         f"it honours {', '.join(SUPPORTED_FIELDS)}")
    return fields


class EvaluatorForGeneration(Evaluator):
    """Results `{"prompt", "pred", "target"}` (lists of strings; target None where unknown).
    `max_length` (CoLLiE's, prompt + continuation) is used when `max_new_tokens` is not set."""

    padding_side = "left"
    supports_sequence_parallel = False

    def __init__(self, model: torch.nn.Module, config, dataset, metrics: Optional[dict[str, BaseMetric]] = None,
                 tokenizer: Any = None, max_new_tokens: Optional[int] = None, do_sample: Optional[bool] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generation_config: Union[GenerationConfig, dict, None] = None, skip_special_tokens: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(model, config, dataset, metrics, tokenizer=tokenizer, **kwargs)
        if self.tokenizer is None:
            raise ValueError("EvaluatorForGeneration needs a tokenizer to decode what it generates: pass tokenizer=")
        given = {key: value for key, value in dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                   temperature=temperature, top_k=top_k, top_p=top_p).items()
                 if value is not None}
        if generation_config is not None and given:
            raise ValueError(f"EvaluatorForGeneration: give generation_config or {', '.join(given)}, not both")
        settings = generation_settings(generation_config) if generation_config is not None else given
        max_length = settings.pop("max_length", None)
        self.max_length = max_length if "max_new_tokens" not in settings else None
        self.skip_special_tokens = skip_special_tokens
        self.generation = dict(max_new_tokens=32, do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                               eos_token_id=self.tokenizer.eos_token_id, pad_token_id=pad_token_id(self.tokenizer))
        self.generation.update(settings)

    def padder_item(self, item: dict) -> dict:
        return generation_item(item, self.tokenizer, self.skip_special_tokens)

    def eval_batch(self, batch: dict) -> dict:
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        settings = self.generation
        if self.max_length is not None:
            room = self.max_length - input_ids.shape[1]
            if room < 1:
                raise ValueError(f"generation_config.max_length {self.max_length} leaves no room after a prompt of "
                                 f"{input_ids.shape[1]} tokens; set max_new_tokens")
            settings = {**settings, "max_new_tokens": room}
        out = self.model.generate(input_ids, attention_mask=mask, **settings, **self._in_step())
        preds = self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=self.skip_special_tokens)
        if "text" in batch:
            prompts = list(batch["text"])
        else:  # a caller's collate_fn: the prompt is its ids without padding
            prompts = [self.tokenizer.decode(row[keep.bool()], skip_special_tokens=self.skip_special_tokens)
                       for row, keep in zip(batch["input_ids"], batch["attention_mask"])]
        return {"prompt": prompts, "pred": preds, "target": self._targets(batch.get("target"), len(preds))}

    def _in_step(self) -> dict:
        """What makes data-parallel ranks decode as many steps as each other (a sharded model's
        forward is collective): collie's `stop_group`, or transformers' `synced_gpus` for a model
        that runs as transformers' own class (data parallel only: its group is the world)."""
        group = self.runtime.dp_group if self.runtime is not None else None
        if group is None:
            return {}
        return {"stop_group": group} if isinstance(self.model, GenerationMixin) else {"synced_gpus": True}

    def _targets(self, targets, count: int) -> list:
        """Target texts; CoLLiE's token-id targets (a tensor or id lists) decoded."""
        if targets is None:
            return [None] * count
        return [self.tokenizer.decode(target, skip_special_tokens=self.skip_special_tokens)
                if torch.is_tensor(target) or (isinstance(target, list) and target and isinstance(target[0], int))
                else target for target in targets]
